"""DP-ready MONAI classification networks, by name."""

from fedmed.models import networks as _networks  # noqa: F401  (registers the networks)
from fedmed.models.registry import (
    available_models,
    check_model_name,
    create_model,
    float_state,
    load_float_state,
    make_dp_compatible,
    register_model,
)

__all__ = [
    "available_models",
    "check_model_name",
    "create_model",
    "float_state",
    "load_float_state",
    "make_dp_compatible",
    "register_model",
]
