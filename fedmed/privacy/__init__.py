"""Differential privacy at the site: DP-SGD plan, local training, persistent accountant.

Local training (:func:`train_private`, :class:`TrainOutcome`) needs torch and Opacus, so
it is imported on first use: ``fedmed audit`` reads ledgers through this package on an
auditor's machine that has neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedmed.privacy.accountant import (
    AccountantStore,
    MechanismStep,
    calibrate_noise,
    epsilon_of,
)
from fedmed.privacy.plan import PrivacyPlan, check_budget, plan_privacy

if TYPE_CHECKING:
    from fedmed.privacy.training import TrainOutcome, train_private

_TRAINING = ("TrainOutcome", "train_private")

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


def __getattr__(name: str) -> Any:
    """``fedmed.privacy.train_private`` and ``TrainOutcome``, imported with torch when first asked for."""
    if name in _TRAINING:
        from fedmed.privacy import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
