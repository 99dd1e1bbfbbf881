"""Tests for fedmed.privacy.plan: a site's DP-SGD terms, and the budget checked before each round."""

from __future__ import annotations

import math
import re

import pytest

from fedmed.config import AccountantName, PrivacyConfig
from fedmed.errors import PrivacyError
from fedmed.privacy.accountant import MechanismStep, epsilon_of
from fedmed.privacy.plan import (
    BUDGET_TOLERANCE,
    PrivacyPlan,
    check_budget,
    plan_privacy,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def fixed_noise(sigma: float = 1.0, **kwargs: object) -> PrivacyConfig:
    return PrivacyConfig(noise_multiplier=sigma, **kwargs)


def plan_for(
    privacy: PrivacyConfig,
    *,
    n_train: int = 1000,
    batch_size: int = 64,
    local_epochs: int = 1,
    rounds: int = 3,
    site: str = "site-a",
) -> PrivacyPlan:
    return plan_privacy(
        privacy,
        site=site,
        n_train=n_train,
        batch_size=batch_size,
        local_epochs=local_epochs,
        rounds=rounds,
    )


# ---------------------------------------------------------------- delta against 1/N


@pytest.mark.parametrize(
    "delta, n_train, expected",
    [
        (1e-3, 1000, "delta 0.001 is not below 1/N = 0.001 for its 1000 training records"),
        (1e-3, 1001, "delta 0.001 is not below 1/N = 0.000999 for its 1001 training records"),
        (2e-3, 1000, "delta 0.002 is not below 1/N = 0.001 for its 1000 training records"),
        (1e-5, 100_000, "delta 1e-05 is not below 1/N = 1e-05 for its 100000 training records"),
        (0.5, 10, "delta 0.5 is not below 1/N = 0.1 for its 10 training records"),
    ],
)
def test_delta_not_below_one_over_n_is_refused(delta: float, n_train: int, expected: str) -> None:
    with pytest.raises(PrivacyError, match=re.escape(f"site hospital-7: {expected}")) as caught:
        plan_for(fixed_noise(delta=delta), n_train=n_train, site="hospital-7")
    assert "set privacy.delta below" in str(caught.value)  # names the key to change


@pytest.mark.parametrize("delta, n_train", [(1e-5, 99_999), (9.9e-4, 1000), (1e-5, 64)])
def test_delta_below_one_over_n_is_accepted(delta: float, n_train: int) -> None:
    assert plan_for(fixed_noise(delta=delta), n_train=n_train, batch_size=16).delta == delta


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "n_train, batch_size, local_epochs, batches",
    [
        (1000, 64, 1, 16),  # 15.6 -> 16
        (1024, 64, 2, 16),
        (64, 16, 3, 4),
        (65, 16, 1, 5),
        (10, 64, 1, 1),  # batch larger than the site: every record sampled at rate 1
        (600, 1, 1, 600),
    ],
)
def test_sample_rate_is_one_over_batches_per_epoch(
    n_train: int, batch_size: int, local_epochs: int, batches: int
) -> None:
    assert batches == math.ceil(n_train / batch_size)
    plan = plan_for(fixed_noise(delta=1e-5 if n_train > 100 else 1e-3 / n_train), n_train=n_train,
                    batch_size=batch_size, local_epochs=local_epochs)
    assert plan.sample_rate == 1.0 / batches
    assert plan.steps_per_round == local_epochs * batches
    assert plan.round_step() == MechanismStep(plan.noise_multiplier, 1.0 / batches, local_epochs * batches)


# ---------------------------------------------------------------- noise


def test_fixed_noise_is_used_as_given() -> None:
    privacy = fixed_noise(1.7, max_grad_norm=0.5, accountant="rdp")
    plan = plan_for(privacy)
    assert plan.noise_multiplier == 1.7
    assert plan.max_grad_norm == 0.5
    assert plan.accountant == "rdp" and isinstance(plan.accountant, str)
    assert plan.budget_epsilon is None


@pytest.mark.parametrize(
    "target, accountant, rounds, local_epochs",
    [(2.0, AccountantName.RDP, 3, 1), (8.0, AccountantName.RDP, 5, 2), (1.0, AccountantName.PRV, 2, 1)],
)
def test_noise_derived_from_target_epsilon_spends_the_budget(
    target: float, accountant: AccountantName, rounds: int, local_epochs: int
) -> None:
    privacy = PrivacyConfig(target_epsilon=target, accountant=accountant)
    plan = plan_for(privacy, n_train=1000, batch_size=64, local_epochs=local_epochs, rounds=rounds)
    assert plan.budget_epsilon == target
    assert plan.accountant == accountant.value
    whole_run = [MechanismStep(plan.noise_multiplier, plan.sample_rate, rounds * plan.steps_per_round)]
    spent = epsilon_of(whole_run, delta=plan.delta, accountant=plan.accountant)
    assert target - 0.05 <= spent <= target


def test_more_rounds_need_more_noise() -> None:
    privacy = PrivacyConfig(target_epsilon=3.0, accountant="rdp")
    assert plan_for(privacy, rounds=10).noise_multiplier > plan_for(privacy, rounds=2).noise_multiplier


def test_plan_is_deterministic() -> None:
    """Every fresh ClientApp process must derive the same noise from the same config."""
    privacy = PrivacyConfig(target_epsilon=3.0, accountant="rdp")
    assert plan_for(privacy) == plan_for(privacy)


# ---------------------------------------------------------------- budget


@pytest.mark.parametrize(
    "accountant, target, rounds", [(AccountantName.RDP, 3.0, 4), (AccountantName.PRV, 1.0, 2)]
)
def test_budget_allows_the_planned_rounds_and_refuses_the_next(
    accountant: AccountantName, target: float, rounds: int
) -> None:
    plan = plan_for(PrivacyConfig(target_epsilon=target, accountant=accountant), rounds=rounds)
    history: list[MechanismStep] = []
    projected = []
    for _ in range(rounds):
        projected.append(check_budget(plan, history, site="site-b"))
        history.append(plan.round_step())
    assert projected == sorted(projected) and len(set(projected)) == rounds
    assert projected[-1] <= target + BUDGET_TOLERANCE
    assert projected[-1] == pytest.approx(epsilon_of(history, delta=plan.delta, accountant=plan.accountant))
    pattern = (
        r"site site-b: another round would spend epsilon \d+\.\d{3}, "
        rf"over the budget {target:g} for this dataset \(already spent"
    )
    with pytest.raises(PrivacyError, match=pattern) as caught:
        check_budget(plan, history, site="site-b")
    spent = epsilon_of(history, delta=plan.delta, accountant=plan.accountant)
    assert f"already spent {spent:.3f}" in str(caught.value)
    assert "budget" in str(caught.value) and "refusing to train" in str(caught.value)


def test_budget_counts_a_history_loaded_from_disk() -> None:
    """A history written as one merged entry counts the same as round-by-round entries."""
    plan = plan_for(PrivacyConfig(target_epsilon=2.0, accountant="rdp"), rounds=3)
    merged = [MechanismStep(plan.noise_multiplier, plan.sample_rate, 3 * plan.steps_per_round)]
    with pytest.raises(PrivacyError, match="site site-c: .*over the budget 2"):
        check_budget(plan, merged, site="site-c")


def test_first_round_projection_is_one_round() -> None:
    plan = plan_for(fixed_noise(1.0, accountant="rdp"))
    assert check_budget(plan, [], site="a") == pytest.approx(
        epsilon_of([plan.round_step()], delta=plan.delta, accountant="rdp")
    )


def test_fixed_noise_has_no_budget_to_refuse() -> None:
    plan = plan_for(fixed_noise(0.7, accountant="rdp"))
    history = [MechanismStep(0.7, plan.sample_rate, 5_000)]
    assert check_budget(plan, history, site="a") > 50  # reported, never refused
