"""Tests for fedmed.privacy.terms: a site refuses the server's terms when they fall outside its policy."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fedmed.config import AccountantName, PrivacyConfig, SitePolicy
from fedmed.errors import PrivacyError
from fedmed.models import available_models
from fedmed.privacy.plan import PrivacyPlan
from fedmed.privacy.terms import check_noise, check_randomness, check_terms

SITE = "site-a"
REFUSES = re.escape(f"site {SITE} refuses the server's terms: ")


def make_policy(**overrides: Any) -> SitePolicy:
    fields: dict[str, Any] = {
        "max_epsilon": 8.0,
        "delta": 1e-5,
        "accountant": "prv",
        "max_grad_norm": 1.0,
        "min_noise_multiplier": 0.5,
        "allowed_models": ["small_cnn"],
        "max_local_epochs": 3,
    }
    return SitePolicy.model_validate({**fields, **overrides})


POLICY = make_policy()


def request(**overrides: Any) -> PrivacyConfig:
    fields: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "prv"}
    return PrivacyConfig.model_validate({**fields, **overrides})


def check(
    requested: PrivacyConfig,
    *,
    model: str = "small_cnn",
    local_epochs: int = 1,
    policy: SitePolicy = POLICY,
    secure_aggregation: bool = True,
) -> None:
    check_terms(
        policy, site=SITE, requested=requested, model=model,
        local_epochs=local_epochs, secure_aggregation=secure_aggregation,
    )


def plan(noise_multiplier: float) -> PrivacyPlan:
    return PrivacyPlan(
        noise_multiplier=noise_multiplier,
        sample_rate=0.125,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="prv",
        steps_per_round=8,
        budget_epsilon=8.0,
    )


# ---------------------------------------------------------------- terms within the policy


@pytest.mark.parametrize(
    "requested, model, local_epochs",
    [
        (request(), "small_cnn", 1),
        (request(delta=1e-5, max_grad_norm=1.0, noise_multiplier=0.5), "small_cnn", 3),  # every term at its limit
        (request(delta=1e-7), "small_cnn", 1),  # a smaller delta is stricter
        (request(max_grad_norm=0.1), "small_cnn", 1),
        (request(noise_multiplier=5.0), "small_cnn", 2),
        (request(noise_multiplier=None, target_epsilon=3.0), "small_cnn", 1),  # noise derived later: check_noise
        (request(noise_multiplier=None, target_epsilon=100.0), "small_cnn", 1),  # the budget is checked elsewhere
    ],
    ids=["typical", "at-every-limit", "smaller-delta", "smaller-clip", "more-noise", "target-epsilon", "big-target"],
)
def test_terms_within_the_policy_pass(requested: PrivacyConfig, model: str, local_epochs: int) -> None:
    check(requested, model=model, local_epochs=local_epochs)


# ---------------------------------------------------------------- one violation each

VIOLATIONS = [
    pytest.param(
        {"requested": request(delta=1e-4)},
        "delta 0.0001 is above the policy's 1e-05",
        id="delta-above",
    ),
    pytest.param(
        {"requested": request(accountant="rdp")},
        "accountant rdp differs from the policy's prv",
        id="accountant-differs",
    ),
    pytest.param(
        {"requested": request(max_grad_norm=1.5)},
        "clip norm 1.5 is above the policy's 1",
        id="clip-norm-above",
    ),
    pytest.param(
        {"requested": request(noise_multiplier=0.3)},
        "noise multiplier 0.3 is below the policy's 0.5",
        id="noise-below-min",
    ),
    pytest.param(
        {"requested": request(), "model": "densenet121"},
        "model densenet121 is not among the policy's allowed_models",
        id="model-not-allowed",
    ),
    pytest.param(
        {"requested": request(), "local_epochs": 4},
        "4 local epochs exceed the policy's 3",
        id="too-many-local-epochs",
    ),
]


@pytest.mark.parametrize("call, term", VIOLATIONS)
def test_each_violation_is_refused_naming_site_and_term(call: dict[str, Any], term: str) -> None:
    with pytest.raises(PrivacyError, match=REFUSES + re.escape(term) + "$"):
        check(**call)


def test_accountant_differs_the_other_way() -> None:
    with pytest.raises(PrivacyError, match=re.escape("accountant prv differs from the policy's rdp")):
        check(request(accountant=AccountantName.PRV), policy=make_policy(accountant="rdp"))


def test_every_violation_is_listed_in_one_message() -> None:
    requested = request(delta=1e-3, accountant="rdp", max_grad_norm=2.0, noise_multiplier=0.1)
    with pytest.raises(PrivacyError) as caught:
        check(requested, model="densenet121", local_epochs=10)
    message = str(caught.value)
    assert message.startswith(f"site {SITE} refuses the server's terms: ")
    problems = message.removeprefix(f"site {SITE} refuses the server's terms: ").split("; ")
    assert problems == [
        "delta 0.001 is above the policy's 1e-05",
        "accountant rdp differs from the policy's prv",
        "clip norm 2 is above the policy's 1",
        "noise multiplier 0.1 is below the policy's 0.5",
        "model densenet121 is not among the policy's allowed_models",
        "10 local epochs exceed the policy's 3",
    ]


def test_two_violations_both_named() -> None:
    with pytest.raises(PrivacyError, match=REFUSES + r"clip norm 3 .*; 5 local epochs exceed the policy's 3$"):
        check(request(max_grad_norm=3.0), local_epochs=5)


def test_site_name_is_the_one_given() -> None:
    with pytest.raises(PrivacyError, match=r"^site hospital-7 refuses the server's terms: "):
        check_terms(
            POLICY, site="hospital-7", requested=request(delta=0.5), model="small_cnn", local_epochs=1,
            secure_aggregation=True,
        )


# ---------------------------------------------------------------- optional limits


@pytest.mark.parametrize("model", available_models())
def test_allowed_models_none_allows_every_registered_model(model: str) -> None:
    check(request(), model=model, policy=make_policy(allowed_models=None))


def test_empty_allowed_models_allows_none() -> None:
    with pytest.raises(PrivacyError, match=re.escape("model small_cnn is not among the policy's allowed_models")):
        check(request(), policy=make_policy(allowed_models=[]))


def test_max_local_epochs_none_allows_any_number() -> None:
    check(request(), local_epochs=1000, policy=make_policy(max_local_epochs=None))


# ---------------------------------------------------------------- derived noise


@pytest.mark.parametrize("noise", [0.5, 0.5000001, 1.0, 10.0], ids=["at-min", "just-above", "above", "far-above"])
def test_check_noise_accepts_noise_at_or_above_the_minimum(noise: float) -> None:
    check_noise(POLICY, plan(noise), site=SITE)


@pytest.mark.parametrize(
    "noise, shown",
    [(0.4994, "0.4994"), (0.25, "0.25"), (0.01234, "0.01234")],
    ids=["just-below", "half", "tiny"],
)
def test_check_noise_refuses_noise_below_the_minimum(noise: float, shown: str) -> None:
    with pytest.raises(
        PrivacyError,
        match=REFUSES
        + re.escape(f"the run's target epsilon needs noise multiplier {shown}, below the policy's 0.5"),
    ):
        check_noise(POLICY, plan(noise), site=SITE)


@pytest.mark.parametrize(
    ("simulated", "accepts", "refusal"),
    [
        (False, True, "a real site never accepts it"),
        (True, False, "only when its policy sets unsafe_accept_reproducible"),
    ],
    ids=["hospital", "simulated-without-consent"],
)
def test_seeded_randomness_is_refused_unless_a_simulated_policy_accepts_it(
    simulated: bool, accepts: bool, refusal: str
) -> None:
    policy = make_policy(unsafe_accept_reproducible=accepts)
    with pytest.raises(PrivacyError, match=refusal):
        check_randomness(policy, site="site-a", unsafe_reproducible=True, simulated=simulated)
    check_randomness(policy, site="site-a", unsafe_reproducible=False, simulated=simulated)


def test_a_simulated_site_whose_policy_accepts_seeded_randomness_trains() -> None:
    check_randomness(
        make_policy(unsafe_accept_reproducible=True), site="site-a", unsafe_reproducible=True, simulated=True
    )
