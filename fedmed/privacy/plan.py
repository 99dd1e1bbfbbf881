"""The DP-SGD parameters a site trains with, derived from config and the site's size."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmed.config import PrivacyConfig
from fedmed.errors import PrivacyError
from fedmed.privacy.accountant import MechanismStep, calibrate_noise, epsilon_of


@dataclass(frozen=True)
class PrivacyPlan:
    """DP-SGD settings of one site for one run."""

    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    accountant: str
    steps_per_round: int
    budget_epsilon: float | None
    """Target epsilon for the whole run; None when the noise was fixed instead."""

    def round_step(self) -> MechanismStep:
        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps_per_round)


def plan_privacy(
    privacy: PrivacyConfig,
    *,
    site: str,
    n_train: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
) -> PrivacyPlan:
    """Derive the site's DP-SGD settings for the whole run.

    The sample rate follows Opacus' Poisson loader (1 / batches per epoch). With a target
    epsilon, the noise is calibrated so the planned ``rounds`` of local training spend
    exactly that budget; every fresh ClientApp process derives the same noise.

    Raises:
        PrivacyError: delta is not below 1/N for the site's N training records.
    """
    if n_train < 1:
        raise PrivacyError(f"site {site}: no training records; nothing to train on")
    if privacy.delta >= 1.0 / n_train:
        raise PrivacyError(
            f"site {site}: delta {privacy.delta:g} is not below 1/N = {1.0 / n_train:.3g} for its "
            f"{n_train} training records; set privacy.delta below {1.0 / n_train:.3g} "
            "(a delta that large allows releasing a whole record)"
        )
    batches_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / batches_per_epoch
    steps_per_round = local_epochs * batches_per_epoch
    noise = privacy.noise_multiplier
    if noise is None:
        noise = calibrate_noise(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=sample_rate,
            steps=rounds * steps_per_round,
            accountant=privacy.accountant.value,
        )
    return PrivacyPlan(
        noise_multiplier=noise,
        sample_rate=sample_rate,
        max_grad_norm=privacy.max_grad_norm,
        delta=privacy.delta,
        accountant=privacy.accountant.value,
        steps_per_round=steps_per_round,
        budget_epsilon=privacy.target_epsilon,
    )


BUDGET_TOLERANCE = 0.02
"""Slack on the budget check: accountants are numerical (Opacus PRV: eps_error 0.01)."""


def check_budget(
    plan: PrivacyPlan, history: list[MechanismStep], *, site: str, budget: float | None = None
) -> float:
    """Epsilon after one more round; refuse before training if it would exceed the budget.

    ``budget`` is the site's own limit for its dataset (its policy); without it, the
    run's target epsilon is the limit.

    Raises:
        PrivacyError: the round would take the site past its budget.
    """
    limit = plan.budget_epsilon if budget is None else budget
    projected = epsilon_of([*history, plan.round_step()], delta=plan.delta, accountant=plan.accountant)
    if limit is not None and projected > limit + BUDGET_TOLERANCE:
        spent = epsilon_of(history, delta=plan.delta, accountant=plan.accountant)
        raise PrivacyError(
            f"site {site}: another round would spend epsilon {projected:.3f}, over the budget "
            f"{limit:g} for this dataset (already spent {spent:.3f}); refusing to train"
        )
    return projected


def runs_that_fit(
    history: list[MechanismStep], run: list[MechanismStep], *, delta: float, accountant: str, budget: float,
    most: int = 50,
) -> int:
    """How many more runs with the mechanism steps ``run`` the budget still admits (up to ``most``).

    Runs compose, they do not add up: k runs are k times each step, composed with the
    history; epsilon grows with k, so k is found by bisection (a few accountant calls).
    """

    def fits(count: int) -> bool:
        steps = [*history, *(MechanismStep(s.noise_multiplier, s.sample_rate, s.steps * count) for s in run)]
        return epsilon_of(steps, delta=delta, accountant=accountant) <= budget + BUDGET_TOLERANCE

    low, high = 0, most  # fits(low) holds (no run spends nothing more); find the largest count that fits
    if fits(high):
        return most
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
