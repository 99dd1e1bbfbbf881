"""Tests for fedmed.models: every registered network trains under Opacus; the registry is loud."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmed.config import InputConfig, SampleUnit, VolumeConfig
from fedmed.errors import ConfigError
from fedmed.models import (
    available_models,
    check_model_name,
    create_model,
    float_state,
    load_float_state,
    make_dp_compatible,
    model_spatial_dims,
    networks,
    register_model,
)
from fedmed.models import registry as registry_module

IMAGE_SIZE = 32
"""Smallest size every network takes: DenseNet121 downsamples 32x (at 16x16 it fails)."""


def spec_for(name: str) -> InputConfig:
    """The smallest input each network takes: 32x32 images, or 32x32x32 volumes for a 3-D one."""
    if model_spatial_dims(name) == 3:
        return InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=(IMAGE_SIZE,) * 3))
    return InputConfig(image_size=IMAGE_SIZE)


def test_registered_models() -> None:
    names = available_models()
    assert names == sorted(names)
    assert {"small_cnn", "densenet121"} <= set(available_models(2))
    assert {"small_cnn_3d", "densenet121_3d"} <= set(available_models(3))
    assert set(available_models(2)) | set(available_models(3)) == set(names)


@pytest.mark.parametrize("name", available_models())
def test_one_dp_sgd_step_gives_finite_grads(name: str) -> None:
    spec = spec_for(name)
    torch.manual_seed(0)
    model = create_model(name, spec=spec)
    before = {k: v.clone() for k, v in float_state(model).items()}
    dataset = TensorDataset(torch.rand(2, 1, *spec.spatial_shape), torch.tensor([0.0, 1.0]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure RNG off; full backward hook on inputs
        private_model, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=DataLoader(dataset, batch_size=2),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
        )
        images, labels = next(iter(loader))
        logits = private_model(images)
        assert logits.shape == (2, 1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), labels)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    after = float_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", available_models())
def test_created_models_are_dp_ready(name: str) -> None:
    model = create_model(name, spec=spec_for(name))
    modules = list(model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert not any(getattr(m, "inplace", False) for m in modules)
    assert ModuleValidator.validate(model, strict=False) == []


@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_cnn_output_shape(in_channels: int) -> None:
    model = create_model("small_cnn", spec=InputConfig(image_size=16, channels=in_channels))
    assert model(torch.rand(5, in_channels, 16, 16)).shape == (5, 1)


def test_a_network_refuses_input_of_the_other_dimension() -> None:
    volume = InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=(16, 16, 16)))
    with pytest.raises(
        ConfigError,
        match=r"model small_cnn takes 2-D input, not 3-D \(series\); 3-D networks: densenet121_3d, small_cnn_3d",
    ):
        create_model("small_cnn", spec=volume)
    with pytest.raises(ConfigError, match="model small_cnn_3d takes 3-D input, not 2-D"):
        create_model("small_cnn_3d", spec=InputConfig(image_size=16))
    model = create_model("small_cnn_3d", spec=volume)
    assert model(torch.rand(3, 1, 16, 16, 16)).shape == (3, 1)


def bn_relu_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 1),
    )


def test_make_dp_compatible_fixes_batchnorm_and_inplace() -> None:
    model = bn_relu_net()
    assert ModuleValidator.validate(model, strict=False)  # Opacus rejects it as it is
    fixed = make_dp_compatible(model)
    modules = list(fixed.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert any(isinstance(m, nn.GroupNorm) for m in modules)
    relus = [m for m in modules if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 and not any(m.inplace for m in relus)
    assert ModuleValidator.validate(fixed, strict=False) == []
    assert fixed(torch.rand(3, 1, 8, 8)).shape == (3, 1)


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("densenet12", r"unknown model 'densenet12' \(did you mean 'densenet121'\?\); available models: "),
        ("small-cnn", r"unknown model 'small-cnn' \(did you mean 'small_cnn'\?\)"),
        (
            "resnet50",
            r"unknown model 'resnet50'; available models: densenet121, densenet121_3d, small_cnn, small_cnn_3d",
        ),
    ],
)
def test_unknown_name(name: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        create_model(name, spec=InputConfig(image_size=32))
    with pytest.raises(ConfigError, match=pattern):
        check_model_name(name)


def test_check_model_name_returns_known_names() -> None:
    for name in available_models():
        assert check_model_name(name) == name


def test_register_rejects_duplicate_name() -> None:
    before = available_models()
    with pytest.raises(ValueError, match="model 'small_cnn' is already registered"):
        register_model("small_cnn")(lambda shape, in_channels: bn_relu_net())
    assert available_models() == before
    assert registry_module._REGISTRY["small_cnn"].factory is networks.small_cnn  # not replaced


def test_registered_factory_is_made_dp_compatible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    seen: list[tuple[tuple[int, ...], int]] = []

    @register_model("test_bn_net")
    def factory(shape: tuple[int, ...], in_channels: int) -> nn.Module:
        seen.append((shape, in_channels))
        return bn_relu_net()

    assert "test_bn_net" in available_models()
    model = create_model("test_bn_net", spec=InputConfig(image_size=24))
    assert seen == [((24, 24), 1)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


class WithIntegerBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.long))
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("mask", torch.tensor([True, False]))


def test_float_state_excludes_integer_buffers() -> None:
    model = WithIntegerBuffer()
    assert set(model.state_dict()) == {"linear.weight", "linear.bias", "steps", "scale", "mask"}
    state = float_state(model)
    assert set(state) == {"linear.weight", "linear.bias", "scale"}
    assert all(torch.is_floating_point(v) for v in state.values())


def test_load_float_state_round_trips_and_keeps_integer_buffers() -> None:
    source, target = WithIntegerBuffer(), WithIntegerBuffer()
    with torch.no_grad():
        source.linear.weight.fill_(0.5)
        source.scale.fill_(3.0)
        source.steps.fill_(100)
    load_float_state(target, float_state(source))
    for key, value in float_state(source).items():
        assert torch.equal(float_state(target)[key], value)
    assert int(target.steps) == 7  # integer buffers do not travel


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda s: s.pop("linear.bias"), r"missing \['linear\.bias'\], unexpected \[\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"missing \[\], unexpected \['extra'\]"),
        (lambda s: s.update(steps=torch.tensor(1.0)), r"missing \[\], unexpected \['steps'\]"),
        (lambda s: s.clear(), r"missing \['linear\.bias', 'linear\.weight', 'scale'\]"),
    ],
    ids=["missing", "unexpected", "integer-buffer-key", "empty"],
)
def test_load_float_state_rejects_key_mismatch(change, pattern: str) -> None:  # noqa: ANN001
    model = WithIntegerBuffer()
    state = float_state(WithIntegerBuffer())
    original = {k: v.clone() for k, v in float_state(model).items()}
    change(state)
    with pytest.raises(ValueError, match=r"model weights do not match: " + pattern):
        load_float_state(model, state)
    for key, value in float_state(model).items():
        assert torch.equal(value, original[key])  # nothing loaded
