"""fedmed's Flower ServerApp."""
