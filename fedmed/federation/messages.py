"""What travels between the server and the sites, in one place.

Keys are kebab-case like Flower's own. The server sends the round's plan (model,
training and DP terms) as JSON validated by the same pydantic schema the YAML uses, so
a site never trusts an unchecked value; sites reply with float weights and scalar
metrics only.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from pydantic import ValidationError

from fedmed.config import (
    EvaluationConfig,
    ExperimentConfig,
    ModelConfig,
    PrivacyConfig,
    SecureAggregationConfig,
    TaskConfig,
    TrainingConfig,
)
from fedmed.config.schema import InputConfig, Section
from fedmed.errors import ConfigError

if TYPE_CHECKING:
    import torch


class Key(StrEnum):
    # records in a message
    ARRAYS = "arrays"
    CONFIG = "config"
    METRICS = "metrics"
    SITE = "site"
    IDENTITY = "identity"
    """The reply's signed site identity (fedmed.federation.identity)."""
    # ConfigRecord entries
    PLAN = "plan"
    SERVER_ROUND = "server-round"
    SITE_ID = "site-id"
    SIGNATURE = "signature"
    LEDGER = "ledger"
    EVALUATION = "evaluation"
    # MetricRecord entries
    NUM_EXAMPLES = "num-examples"
    EVAL_LOSS = "eval-loss"
    EPSILON = "epsilon"
    DELTA = "delta"
    BUDGET_EPSILON = "budget-epsilon"
    NOISE_MULTIPLIER = "noise-multiplier"
    SAMPLE_RATE = "sample-rate"
    STEPS = "steps"
    RELEASE = "release"
    """What a site releases about its test set for the pooled metric, in its task's layout
    (fedmed.tasks: score groups for AUROC, per-structure Dice sums for segmentation)."""
    SKIPPED_FILES = "skipped-files"
    SECONDS = "seconds"
    # run config (set by `fedmed simulate` and `fedmed run`)
    CONFIG_PATH = "config-path"
    OUT_DIR = "out-dir"
    BASELINES_DIR = "baselines-dir"
    RUN_KIND = "run-kind"
    """``simulation`` (fedmed simulate) or ``deployment`` (fedmed run)."""
    # node config: `partition-id` in simulation; at a hospital `site-id`, `data-dir`,
    # `state-dir`, `policy-path`, `manifest-path` and optionally `cache-dir`, `signing-key`
    PARTITION_ID = "partition-id"
    DATA_DIR = "data-dir"
    STATE_DIR = "state-dir"
    CACHE_DIR = "cache-dir"
    POLICY_PATH = "policy-path"
    SIGNING_KEY = "signing-key"
    MANIFEST_PATH = "manifest-path"


SIMULATION, DEPLOYMENT = "simulation", "deployment"
"""The two kinds of run: one machine playing every hospital, or a real consortium."""
LOCAL_MODEL_ACTION = "local_model"
"""``train.local_model``: a site trains a model on its data alone, for cross-site evaluation."""
CROSS_SITE_ACTION = "cross_site"
"""``evaluate.cross_site``: a site evaluates every model the server holds, by subgroup."""
GLOBAL_MODEL = "global"
POOLED_MODEL = "pooled"
"""Simulation only: DP-SGD on all sites' data pooled."""
MODEL_PREFIX = "model:"
"""In a cross-site message each model travels in its own ArrayRecord, keyed ``model:<id>``."""


class ErrorCode(IntEnum):
    """Codes of error replies a site sends instead of an update (Flower uses 0-9)."""

    SITE_REFUSED = 100
    """The site cannot or will not train: bad data, privacy budget, invalid plan."""


class RoundPlan(Section):
    """The terms the server asks a site to train or evaluate under."""

    task: TaskConfig = TaskConfig()
    model: ModelConfig
    input: InputConfig
    training: TrainingConfig
    privacy: PrivacyConfig
    secure_aggregation: SecureAggregationConfig
    evaluation: EvaluationConfig = EvaluationConfig()


def encode_plan(config: ExperimentConfig) -> ConfigRecord:
    """The ConfigRecord the server sends with every train and evaluate message.

    The strategy adds ``server-round`` to it for each round.
    """
    plan = RoundPlan(
        task=config.task,
        model=config.model,
        input=config.data.input_only(),
        training=config.training,
        privacy=config.privacy,
        secure_aggregation=config.secure_aggregation,
        evaluation=config.evaluation,
    )
    return ConfigRecord({Key.PLAN: plan.model_dump_json()})


def decode_plan(record: ConfigRecord) -> RoundPlan:
    """Validate the server's plan at the site.

    Raises:
        ConfigError: the plan is missing or does not satisfy the schema.
    """
    try:
        return RoundPlan.model_validate_json(str(record[Key.PLAN]))
    except (KeyError, ValidationError) as error:
        raise ConfigError(f"the server's round plan is invalid: {error}") from None


def arrays_from_state(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: tensor.detach().cpu() for name, tensor in state.items()})


def state_from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def local_model_id(site: str) -> str:
    """The model ``site`` trained on its data alone."""
    return f"local:{site}"


def without_model_id(site: str) -> str:
    """Simulation only: the federation trained without ``site``."""
    return f"without:{site}"


def model_label(model_id: str) -> str:
    """How people read a model id: ``global`` is the federated model."""
    kind, _, site = model_id.partition(":")
    labels = {
        GLOBAL_MODEL: "federated", POOLED_MODEL: "pooled data",
        "local": f"{site} alone", "without": f"federated without {site}",
    }
    return labels.get(kind, model_id)


def scalars(metrics: MetricRecord) -> dict[str, float]:
    """Scalar metrics with snake_case names, as results.json spells them."""
    return {k.replace("-", "_"): v for k, v in metrics.items() if not isinstance(v, list)}


def metric_entries(metrics: dict[str, float | None]) -> dict[str, float]:
    """A task's metrics as MetricRecord entries: kebab-case keys, undefined ones (None) left out."""
    return {k.replace("_", "-"): float(v) for k, v in metrics.items() if v is not None}
