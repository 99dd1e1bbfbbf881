"""Experiment configuration: YAML in, frozen typed objects out."""

from fedmed.config.loader import load_config
from fedmed.config.policy import SitePolicy, load_site_policy
from fedmed.config.schema import (
    AccountantName,
    DataConfig,
    DeviceName,
    EvaluationConfig,
    ExperimentConfig,
    ModelConfig,
    PrivacyConfig,
    SecureAggregationConfig,
    SimulationConfig,
    StrategyName,
    SynthesisConfig,
    TrainingConfig,
)

__all__ = [
    "AccountantName",
    "DataConfig",
    "DeviceName",
    "ExperimentConfig",
    "ModelConfig",
    "PrivacyConfig",
    "EvaluationConfig",
    "SecureAggregationConfig",
    "SimulationConfig",
    "SitePolicy",
    "StrategyName",
    "SynthesisConfig",
    "TrainingConfig",
    "load_config",
    "load_site_policy",
]
