"""Registry of classification networks that Opacus can train.

Every registered network is built, then made DP-compatible (no BatchNorm, no in-place
activations) and validated by Opacus' ModuleValidator, so a model that cannot be trained
with per-sample gradients never reaches a hospital. Networks with in-place residual adds
(MONAI ResNet) cannot be repaired from outside and are not registered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedmed.errors import ConfigError, did_you_mean

ModelFactory = Callable[[int, int], nn.Module]
"""Builds a network for (image_size, in_channels) that outputs one logit per image."""

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under ``name``; a duplicate name is a programming error."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_models() -> list[str]:
    """Names of every registered network, sorted."""
    return sorted(_REGISTRY)


def check_model_name(name: str) -> str:
    """Return ``name`` if registered, else raise ConfigError listing the options."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}{did_you_mean(name, available_models())}; "
            f"available models: {', '.join(available_models())}"
        )
    return name


def create_model(name: str, *, image_size: int, in_channels: int = 1) -> nn.Module:
    """Build the registered network ``name``, made and checked DP-compatible.

    Raises:
        ConfigError: the name is not registered.
    """
    network = _REGISTRY[check_model_name(name)](image_size, in_channels)
    return make_dp_compatible(StandardizedInput(network))


class StandardizedInput(nn.Module):
    """Standardise each image to zero mean and unit variance before the network.

    Scanners differ in brightness and contrast; per-image standardisation removes that
    site signature without learned statistics (nothing to leak, nothing to average), and
    makes SGD on raw [0, 1] intensities converge at all under DP noise.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(-2, -1), keepdim=True)
        std = images.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
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
