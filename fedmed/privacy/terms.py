"""Does the server ask for anything the hospital's policy does not allow?"""

from __future__ import annotations

from fedmed.config import PrivacyConfig, SitePolicy
from fedmed.errors import PrivacyError
from fedmed.privacy.plan import PrivacyPlan


def check_terms(
    policy: SitePolicy,
    *,
    site: str,
    requested: PrivacyConfig,
    model: str,
    local_epochs: int,
    secure_aggregation: bool,
) -> None:
    """Refuse, listing every violation, when the requested terms fall outside the policy.

    Raises:
        PrivacyError: any term is outside the policy; nothing is trained or sent.
    """
    problems = []
    if requested.delta > policy.delta:
        problems.append(f"delta {requested.delta:g} is above the policy's {policy.delta:g}")
    if requested.accountant != policy.accountant:
        problems.append(
            f"accountant {requested.accountant.value} differs from the policy's {policy.accountant.value}"
        )
    if requested.max_grad_norm > policy.max_grad_norm:
        problems.append(
            f"clip norm {requested.max_grad_norm:g} is above the policy's {policy.max_grad_norm:g}"
        )
    if requested.noise_multiplier is not None and requested.noise_multiplier < policy.min_noise_multiplier:
        problems.append(
            f"noise multiplier {requested.noise_multiplier:g} is below the policy's "
            f"{policy.min_noise_multiplier:g}"
        )
    if policy.allowed_models is not None and model not in policy.allowed_models:
        problems.append(f"model {model} is not among the policy's allowed_models")
    if policy.max_local_epochs is not None and local_epochs > policy.max_local_epochs:
        problems.append(f"{local_epochs} local epochs exceed the policy's {policy.max_local_epochs}")
    if policy.require_secure_aggregation and not secure_aggregation:
        problems.append("the policy requires secure aggregation, which the run turns off")
    if problems:
        raise PrivacyError(f"site {site} refuses the server's terms: {'; '.join(problems)}")


def check_noise(policy: SitePolicy, plan: PrivacyPlan, *, site: str) -> None:
    """Refuse a derived noise multiplier below the policy's minimum.

    Raises:
        PrivacyError: the calibrated noise is too small for the policy.
    """
    if plan.noise_multiplier < policy.min_noise_multiplier:
        raise PrivacyError(
            f"site {site} refuses the server's terms: the run's target epsilon needs noise "
            f"multiplier {plan.noise_multiplier:.4g}, below the policy's {policy.min_noise_multiplier:.4g}"
        )


def check_randomness(policy: SitePolicy, *, site: str, unsafe_reproducible: bool, simulated: bool) -> None:
    """Refuse a run that asks for seeded DP randomness, unless a simulated site's policy accepts it.

    Seeded sampling and noise repeat bit for bit, and the server, which chose the seed, can
    replay the noise and subtract it from the update: no privacy is left against it.

    Raises:
        PrivacyError: the run sets training.unsafe_reproducible and this site is real, or
            its policy does not set unsafe_accept_reproducible.
    """
    if not unsafe_reproducible:
        return
    if not simulated:
        raise PrivacyError(
            f"site {site} refuses the server's terms: the run sets training.unsafe_reproducible (DP noise "
            "seeded from the server's plan, which the server can remove); a real site never accepts it"
        )
    if not policy.unsafe_accept_reproducible:
        raise PrivacyError(
            f"site {site} refuses the server's terms: the run sets training.unsafe_reproducible (DP noise "
            "seeded from the server's plan, which the server can remove); a simulated site accepts it only "
            "when its policy sets unsafe_accept_reproducible: true"
        )
