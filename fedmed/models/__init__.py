"""DP-ready MONAI classification networks for 2-D images and 3-D volumes, by name."""

from fedmed.models import networks as _networks  # noqa: F401  (registers the networks)
from fedmed.models.registry import (
    available_models,
    check_model_name,
    create_model,
    float_state,
    load_float_state,
    make_dp_compatible,
    model_spatial_dims,
    register_model,
)

__all__ = [
    "available_models",
    "check_model_name",
    "create_model",
    "float_state",
    "load_float_state",
    "make_dp_compatible",
    "model_spatial_dims",
    "register_model",
]
