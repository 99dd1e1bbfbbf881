"""Tests for fedmed.federation.messages: the plan is re-validated at the site; weights travel exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedmed.config import ExperimentConfig, InputConfig, load_config
from fedmed.errors import ConfigError
from fedmed.federation.messages import (
    Key,
    RoundPlan,
    arrays_from_state,
    decode_plan,
    encode_plan,
    state_from_arrays,
)
from fedmed.models import create_model, float_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart() -> ExperimentConfig:
    return load_config(REPO / "configs" / "quickstart.yaml")


def plan_json(config: ExperimentConfig) -> dict:
    return json.loads(str(encode_plan(config)[Key.PLAN]))


def record_with(plan: dict) -> ConfigRecord:
    return ConfigRecord({Key.PLAN: json.dumps(plan)})


# ---------------------------------------------------------------- plan


def test_plan_round_trips(quickstart: ExperimentConfig) -> None:
    record = encode_plan(quickstart)
    assert isinstance(record, ConfigRecord)
    assert list(record) == ["plan"]
    assert isinstance(record[Key.PLAN], str)  # plain scalars in Flower records
    plan = decode_plan(record)
    assert isinstance(plan, RoundPlan)
    assert plan.model == quickstart.model
    assert plan.training == quickstart.training
    assert plan.privacy == quickstart.privacy
    assert plan.secure_aggregation == quickstart.secure_aggregation
    assert plan.input.image_size == quickstart.data.image_size == 64 and plan.input.channels == 1
    assert plan.input == quickstart.data.input_only()
    assert plan.privacy.target_epsilon == 8.0 and plan.privacy.delta == 1e-5


def test_plan_leaves_site_details_at_the_server(quickstart: ExperimentConfig) -> None:
    payload = plan_json(quickstart)
    assert set(payload) == {"task", "model", "input", "training", "privacy", "secure_aggregation", "evaluation"}
    assert set(payload["input"]) == {"sample", "image_size", "channels", "volume"}
    assert "quickstart" not in json.dumps(payload)  # no data paths or run name


def test_plan_survives_the_strategy_adding_the_round(quickstart: ExperimentConfig) -> None:
    record = encode_plan(quickstart)
    record[Key.SERVER_ROUND] = 3
    assert decode_plan(record).training == quickstart.training


def test_fedprox_plan_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "fedprox.yaml"
    text = (REPO / "configs" / "quickstart.yaml").read_text()
    text = text.replace("strategy: fedavg", "strategy: fedprox\n  proximal_mu: 0.01")
    text = text.replace("target_epsilon: 8.0", "noise_multiplier: 1.1")
    path.write_text(text)
    config = load_config(path)
    plan = decode_plan(encode_plan(config))
    assert plan.training.proximal_mu == 0.01 and plan.privacy.noise_multiplier == 1.1
    assert plan.privacy.target_epsilon is None


def tamper(section: str, key: str, value: object):  # noqa: ANN201
    def change(plan: dict) -> None:
        if section:
            plan[section][key] = value
        else:
            plan[key] = value

    return change


@pytest.mark.parametrize(
    "change, pattern",
    [
        (tamper("privacy", "max_grad_norm", -1.0), r"privacy\.max_grad_norm"),
        (tamper("privacy", "max_grad_norm", 0), r"privacy\.max_grad_norm"),
        (tamper("privacy", "delta", 1.5), r"privacy\.delta"),
        (tamper("privacy", "noise_multiplier", 1.0), r"set exactly one of target_epsilon and noise_multiplier"),
        (tamper("privacy", "target_epsilon", None), r"set exactly one of target_epsilon and noise_multiplier"),
        (tamper("privacy", "accountant", "gdp"), r"privacy\.accountant"),
        (tamper("privacy", "secure_mode", False), r"privacy\.secure_mode"),
        (tamper("training", "strategy", "fedprox"), r"strategy fedprox needs proximal_mu > 0"),
        (tamper("training", "rounds", 0), r"training\.rounds"),
        (tamper("training", "batch_size", "many"), r"training\.batch_size"),
        (tamper("model", "name", "resnet"), r"unknown model 'resnet'"),
        (tamper("", "extra", 1), r"extra"),
        (lambda plan: plan.pop("privacy"), r"privacy"),
    ],
    ids=[
        "negative-max-grad-norm", "zero-max-grad-norm", "delta-over-one", "both-noise-sources",
        "no-noise-source", "unknown-accountant", "unknown-privacy-key", "fedprox-without-mu",
        "zero-rounds", "batch-not-a-number", "unknown-model", "unknown-top-level-key", "missing-privacy",
    ],
)
def test_tampered_plan_is_refused(quickstart: ExperimentConfig, change, pattern: str) -> None:  # noqa: ANN001
    plan = plan_json(quickstart)
    change(plan)
    with pytest.raises(ConfigError, match=r"(?s)the server's round plan is invalid: .*" + pattern):
        decode_plan(record_with(plan))


@pytest.mark.parametrize(
    "record",
    [
        ConfigRecord({}),
        ConfigRecord({"server-round": 1}),
        ConfigRecord({Key.PLAN: "{not json"}),
        ConfigRecord({Key.PLAN: ""}),
        ConfigRecord({Key.PLAN: "[]"}),
        ConfigRecord({Key.PLAN: 5}),
    ],
    ids=["empty", "no-plan", "not-json", "empty-string", "list", "number"],
)
def test_missing_or_unparsable_plan_is_refused(record: ConfigRecord) -> None:
    with pytest.raises(ConfigError, match="the server's round plan is invalid"):
        decode_plan(record)


@pytest.mark.parametrize("image_size", [0, -64, 8, 100_000])
def test_tampered_image_size_is_refused(quickstart: ExperimentConfig, image_size: int) -> None:
    plan = plan_json(quickstart)
    plan["input"]["image_size"] = image_size
    with pytest.raises(ConfigError, match="image_size"):
        decode_plan(record_with(plan))


# ---------------------------------------------------------------- arrays


def test_arrays_round_trip_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
        "scale": torch.tensor(2.5, dtype=torch.float64),
        "half": torch.randn(3, generator=generator).half(),
        "tiny": torch.tensor([1e-45, -0.0, float("inf")]),
        "count": torch.arange(5),
    }
    record = arrays_from_state(state)
    assert isinstance(record, ArrayRecord)
    back = state_from_arrays(record)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor), name


def test_arrays_from_state_detaches_and_copies_to_cpu() -> None:
    weight = torch.nn.Parameter(torch.ones(2, 2))
    record = arrays_from_state({"w": weight})
    with torch.no_grad():
        weight.add_(1)  # later training does not change what was sent
    back = state_from_arrays(record)
    assert torch.equal(back["w"], torch.ones(2, 2))
    assert not back["w"].requires_grad


def test_model_weights_round_trip() -> None:
    source = create_model("small_cnn", spec=InputConfig(image_size=16))
    target = create_model("small_cnn", spec=InputConfig(image_size=16))
    back = state_from_arrays(arrays_from_state(float_state(source)))
    target.load_state_dict(back, strict=False)
    for name, tensor in float_state(source).items():
        assert torch.equal(float_state(target)[name], tensor)
