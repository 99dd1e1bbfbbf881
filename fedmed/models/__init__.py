"""DP-ready MONAI classification and segmentation networks for 2-D images and 3-D volumes, by name."""

from fedmed.models import networks as _networks  # noqa: F401  (registers the networks)
from fedmed.models.registry import (
    ModelKind,
    available_models,
    check_model_input,
    check_model_name,
    create_model,
    float_state,
    load_float_state,
    make_dp_compatible,
    model_kind,
    model_spatial_dims,
    register_model,
)

__all__ = [
    "ModelKind",
    "available_models",
    "check_model_input",
    "check_model_name",
    "create_model",
    "float_state",
    "load_float_state",
    "make_dp_compatible",
    "model_kind",
    "model_spatial_dims",
    "register_model",
]
