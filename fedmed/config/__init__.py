"""Experiment configuration: YAML in, frozen typed objects out."""

from fedmed.config.loader import load_config
from fedmed.config.policy import SitePolicy, load_site_policy
from fedmed.config.schema import (
    AccountantName,
    DataConfig,
    DeviceName,
    EvaluationConfig,
    ExperimentConfig,
    InputConfig,
    ModelConfig,
    PrivacyConfig,
    SampleUnit,
    SecureAggregationConfig,
    SimulationConfig,
    StrategyName,
    SynthesisConfig,
    TaskConfig,
    TaskKind,
    TrainingConfig,
    VolumeConfig,
)

__all__ = [
    "AccountantName",
    "DataConfig",
    "DeviceName",
    "ExperimentConfig",
    "InputConfig",
    "ModelConfig",
    "PrivacyConfig",
    "SampleUnit",
    "EvaluationConfig",
    "SecureAggregationConfig",
    "SimulationConfig",
    "SitePolicy",
    "StrategyName",
    "SynthesisConfig",
    "TaskConfig",
    "TaskKind",
    "TrainingConfig",
    "VolumeConfig",
    "load_config",
    "load_site_policy",
]
