"""Registry of classification networks that Opacus can train.

Every registered network is built, then made DP-compatible (no BatchNorm, no in-place
activations) and validated by Opacus' ModuleValidator, so a model that cannot be trained
with per-sample gradients never reaches a hospital. Networks with in-place residual adds
(MONAI ResNet) cannot be repaired from outside and are not registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedmed.config.schema import InputConfig
from fedmed.errors import ConfigError, did_you_mean

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
"""Builds a network for (spatial shape, in_channels) that outputs one logit per sample."""


@dataclass(frozen=True)
class _Registered:
    factory: ModelFactory
    spatial_dims: int


_REGISTRY: dict[str, _Registered] = {}


def register_model(name: str, *, spatial_dims: int = 2) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under ``name`` for 2-D images or 3-D volumes; a duplicate name is a programming error."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if spatial_dims not in (2, 3):
            raise ValueError(f"model {name!r}: spatial_dims must be 2 or 3, not {spatial_dims}")
        _REGISTRY[name] = _Registered(factory, spatial_dims)
        return factory

    return decorate


def available_models(spatial_dims: int | None = None) -> list[str]:
    """Names of the registered networks (for 2-D or 3-D input only, when given), sorted."""
    return sorted(name for name, entry in _REGISTRY.items() if spatial_dims in (None, entry.spatial_dims))


def model_spatial_dims(name: str) -> int:
    """2 for an image network, 3 for a volume network.

    Raises:
        ConfigError: the name is not registered.
    """
    return _REGISTRY[check_model_name(name)].spatial_dims


def check_model_name(name: str) -> str:
    """Return ``name`` if registered, else raise ConfigError listing the options."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}{did_you_mean(name, available_models())}; "
            f"available models: {', '.join(available_models())}"
        )
    return name


def create_model(name: str, *, spec: InputConfig) -> nn.Module:
    """Build the registered network ``name`` for the input ``spec`` describes, made and checked DP-compatible.

    Raises:
        ConfigError: the name is not registered, or it takes 2-D input and ``spec`` is 3-D (or the reverse).
    """
    entry = _REGISTRY[check_model_name(name)]
    if entry.spatial_dims != spec.spatial_dims:
        raise ConfigError(
            f"model {name} takes {entry.spatial_dims}-D input, not {spec.spatial_dims}-D ({spec.sample}); "
            f"{spec.spatial_dims}-D networks: {', '.join(available_models(spec.spatial_dims))}"
        )
    network = entry.factory(spec.spatial_shape, spec.channels)
    return make_dp_compatible(StandardizedInput(network))


class StandardizedInput(nn.Module):
    """Standardise each image to zero mean and unit variance before the network.

    Scanners differ in brightness and contrast; per-image (per-volume) standardisation removes that
    site signature without learned statistics (nothing to leak, nothing to average), and
    makes SGD on raw [0, 1] intensities converge at all under DP noise.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, images.ndim))  # per sample and channel, 2-D or 3-D
        mean = images.mean(dim=spatial, keepdim=True)
        std = images.std(dim=spatial, keepdim=True).clamp_min(1e-6)
        return self.network((images - mean) / std)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Swap BatchNorm for GroupNorm and in-place activations for copies, then validate.

    Opacus needs per-sample gradients: BatchNorm mixes samples, and in-place ops break
    its backward hooks ("Output 0 of BackwardHookFunction is a view ...").
    """
    model = ModuleValidator.fix(model)
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    ModuleValidator.validate(model, strict=True)
    return model


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point tensors: the only state that travels between sites."""
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def load_float_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (float tensors only), refusing anything but finite weights of the model's own shapes.

    Raises:
        ValueError: missing or unexpected keys, another shape or dtype, NaN or infinity.
    """
    expected = float_state(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"model weights do not match: missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype:
            raise ValueError(
                f"model weights do not match: {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"not {tuple(expected[name].shape)} {expected[name].dtype}"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"model weights hold NaN or infinite values in {name}")
    model.load_state_dict(state, strict=False)
