"""fedmed: federated training of medical imaging models with differential privacy."""

__version__ = "0.1.0"
