"""Differential privacy at the site: DP-SGD plan, local training, persistent accountant."""

from fedmed.privacy.accountant import (
    AccountantStore,
    MechanismStep,
    calibrate_noise,
    epsilon_of,
)
from fedmed.privacy.plan import PrivacyPlan, check_budget, plan_privacy
from fedmed.privacy.training import TrainOutcome, train_private

__all__ = [
    "AccountantStore",
    "MechanismStep",
    "PrivacyPlan",
    "TrainOutcome",
    "calibrate_noise",
    "check_budget",
    "epsilon_of",
    "plan_privacy",
    "train_private",
]
