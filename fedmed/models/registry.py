"""Registry of classification and segmentation networks that Opacus can train.

Every registered network is built, then made DP-compatible (no BatchNorm, no in-place
activations) and validated by Opacus' ModuleValidator, so a model that cannot be trained
with per-sample gradients never reaches a hospital. The validator does not see in-place
tensor operations inside a module's forward (MONAI ResNet's residual add): networks with
those are repaired in fedmed.models.networks or not registered, and tests/models runs one
real DP-SGD step per network to prove it.

A network is a *classifier*, whose output is (N, outputs), or a *segmenter*, whose output is
(N, outputs, *spatial) at the input's size; ``outputs`` comes from the task (one logit, L
labels, K classes, or background plus the structures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedmed.config.schema import InputConfig
from fedmed.errors import ConfigError, did_you_mean

ModelFactory = Callable[[tuple[int, ...], int, int], nn.Module]
"""Builds a network for (spatial shape, in_channels, outputs)."""


class ModelKind(StrEnum):
    """What a network's output is: what the task's loss and metrics must expect."""

    CLASSIFIER = "classifier"
    """(N, outputs): one logit per output."""
    SEGMENTER = "segmenter"
    """(N, outputs, *spatial): one logit map per output channel, at the input's size."""


@dataclass(frozen=True)
class _Registered:
    factory: ModelFactory
    spatial_dims: int
    kind: ModelKind
    size_multiple: int
    min_side: int
    size_reason: str


_REGISTRY: dict[str, _Registered] = {}


def register_model(
    name: str,
    *,
    spatial_dims: int = 2,
    kind: ModelKind | str = ModelKind.CLASSIFIER,
    size_multiple: int = 1,
    min_side: int = 1,
    size_reason: str = "",
) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under ``name``; a duplicate name or a bad argument is a programming error.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        kind: classifier or segmenter (``ModelKind``).
        size_multiple: every side of the input must be divisible by it (a U-Net's skip
            connections need the down- and up-sampled sizes to meet again).
        min_side: every side must be at least this long (downsampling must leave something).
        size_reason: why, for the error message (e.g. "two stride-2 downsamplings").
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"model {name!r}: spatial_dims must be 2 or 3, not {spatial_dims}")
    if size_multiple < 1 or min_side < 1:
        raise ValueError(f"model {name!r}: size_multiple and min_side must be at least 1")
    checked_kind = _model_kind(kind)

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Registered(factory, spatial_dims, checked_kind, size_multiple, min_side, size_reason)
        return factory

    return decorate


def _model_kind(kind: ModelKind | str) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError:
        options = [k.value for k in ModelKind]
        raise ValueError(
            f"unknown model kind {kind!r}{did_you_mean(str(kind), options)}; kinds: {', '.join(options)}"
        ) from None


def available_models(spatial_dims: int | None = None, kind: ModelKind | str | None = None) -> list[str]:
    """Names of the registered networks, sorted; only those for 2-D or 3-D input, or of one kind, when given.

    Raises:
        ValueError: ``kind`` is not a ``ModelKind``.
    """
    wanted = None if kind is None else _model_kind(kind)
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if spatial_dims in (None, entry.spatial_dims) and wanted in (None, entry.kind)
    )


def model_spatial_dims(name: str) -> int:
    """2 for an image network, 3 for a volume network.

    Raises:
        ConfigError: the name is not registered.
    """
    return _REGISTRY[check_model_name(name)].spatial_dims


def model_kind(name: str) -> ModelKind:
    """Whether ``name`` outputs one value per output (classifier) or one map per output (segmenter).

    Raises:
        ConfigError: the name is not registered.
    """
    return _REGISTRY[check_model_name(name)].kind


def check_model_name(name: str) -> str:
    """Return ``name`` if registered, else raise ConfigError listing the options."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}{did_you_mean(name, available_models())}; "
            f"available models: {', '.join(available_models())}"
        )
    return name


def check_model_input(name: str, spec: InputConfig) -> None:
    """Refuse input the network cannot take: the other dimension, or a side its down-sampling cannot divide.

    Raises:
        ConfigError: the name is not registered, it takes 2-D input and ``spec`` is 3-D (or the
            reverse), or a side of the input breaks the network's size rule; the message names
            the size, the rule and sizes that fit.
    """
    entry = _REGISTRY[check_model_name(name)]
    if entry.spatial_dims != spec.spatial_dims:
        raise ConfigError(
            f"model {name} takes {entry.spatial_dims}-D input, not {spec.spatial_dims}-D ({spec.sample}); "
            f"{spec.spatial_dims}-D networks: {', '.join(available_models(spec.spatial_dims))}"
        )
    shape = spec.spatial_shape
    multiple, low = entry.size_multiple, entry.min_side
    bad = [side for side in shape if side % multiple or side < low]
    if not bad:
        return
    where = f"image_size {shape[0]}" if spec.spatial_dims == 2 else f"volume.shape {tuple(shape)}"
    rules = ([f"divisible by {multiple}"] if multiple > 1 else []) + ([f"at least {low}"] if low > 1 else [])
    rule = " and ".join(rules)
    reason = f" ({entry.size_reason})" if entry.size_reason else ""
    fixes = "; ".join(
        f"{' or '.join(map(str, _fitting_sides(side, multiple, low)))} instead of {side}" for side in sorted(set(bad))
    )
    raise ConfigError(f"model {name} needs every side of its input {rule}{reason}; input {where} is not: use {fixes}")


def _fitting_sides(side: int, multiple: int, low: int) -> list[int]:
    """The nearest sides below and above ``side`` that are multiples of ``multiple`` and at least ``low``."""
    smallest = -(-low // multiple) * multiple
    below = side - side % multiple
    above = max(smallest, -(-side // multiple) * multiple)
    return [below, above] if below >= smallest and below != above else [above]


def create_model(name: str, *, spec: InputConfig, outputs: int = 1) -> nn.Module:
    """Build the registered network ``name`` for the input ``spec`` describes, made and checked DP-compatible.

    Args:
        outputs: logits of a classifier (1 binary, L labels, K classes) or channels of a
            segmenter (background plus one per structure, for a softmax loss).

    Raises:
        ConfigError: ``check_model_input`` refuses the input, or ``outputs`` is not a whole number >= 1.
    """
    check_model_input(name, spec)
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
        raise ConfigError(
            f"model {name}: outputs must be a whole number of at least 1 (the task's logits or segmentation "
            f"channels), not {outputs!r}"
        )
    network = _REGISTRY[name].factory(spec.spatial_shape, spec.channels, outputs)
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
