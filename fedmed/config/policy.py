"""A hospital's own privacy policy: what it agrees to, read from its own disk.

The server never sends this file or its path: a site's node config names it. Every
round the site checks the server's requested terms against it before touching data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from fedmed.config.loader import load_yaml_as
from fedmed.config.schema import AccountantName, Section
from fedmed.errors import did_you_mean

CODE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""What ``fedmed code-digest`` prints: the form of every ``approved_code`` entry."""


class SitePolicy(Section):
    """The terms one hospital accepts for DP training on one dataset."""

    max_epsilon: Annotated[float, Field(gt=0)]
    """Total budget for this site's dataset, over every round of every run."""
    delta: Annotated[float, Field(gt=0, lt=1)]
    """The site keeps its books at this delta; it must stay below 1/N of its records."""
    accountant: AccountantName = AccountantName.PRV
    max_grad_norm: Annotated[float, Field(gt=0)]
    """Largest per-sample clip norm accepted."""
    min_noise_multiplier: Annotated[float, Field(gt=0)]
    """Smallest noise multiplier accepted."""
    allowed_models: list[str] | None = None
    """Networks the site will train; None allows every registered one."""
    max_local_epochs: Annotated[int, Field(ge=1)] | None = None
    require_secure_aggregation: bool = True
    """Refuse to send an update the server could read; only a test bench should say false."""
    min_secure_group: Annotated[int, Field(ge=3)] = 3
    """The fewest sites this site's update is ever summed with under secure aggregation (at
    least 3: with two, each learns the other's update from the model change)."""
    min_cell_size: Annotated[int, Field(ge=1)] = 10
    """Evaluation metrics over fewer patients than this never leave the site ("suppressed");
    the score histograms for the pooled AUROC are coarsened to bins of at least this many."""
    max_evaluation_models: Annotated[int, Field(ge=1)] = 8
    """The most models one cross-site evaluation may ask this site to score: each model the
    server chooses is one more set of statistics about the site's test patients."""
    share_local_model: bool = False
    """Let a model trained on this site's data alone leave the site for cross-site evaluation.
    It is DP-trained like every update, but the server sees it in the clear."""
    approved_code: list[str] | None = None
    """Digests of the code the hospital reviewed (``fedmed code-digest``). None: a real
    site refuses to train; a simulated one does not check."""
    unsafe_accept_reproducible: bool = False
    """Simulation only: accept a run's ``training.unsafe_reproducible``, DP sampling and noise
    seeded from the run's plan, which the server can replay and subtract. A real hospital's
    node refuses to start with this set."""

    @field_validator("allowed_models")
    @classmethod
    def _registered(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if info.context and not info.context.get("check_models", True):
            return names  # a light reader (secure aggregation, the code guard) skips MONAI's import
        from fedmed.models import available_models  # MONAI: only when a policy names models

        known = available_models()
        unknown = [f"'{name}'{did_you_mean(name, known)}" for name in names or [] if name not in known]
        if unknown:
            noun = "model" if len(unknown) == 1 else "models"
            raise ValueError(f"unknown {noun} {', '.join(unknown)}; available models: {', '.join(known)}")
        return names

    @field_validator("approved_code")
    @classmethod
    def _digests(cls, digests: list[str] | None) -> list[str] | None:
        bad = [repr(digest) for digest in digests or [] if not CODE_DIGEST.fullmatch(digest)]
        if bad:
            raise ValueError(
                f"{', '.join(bad)}: not a code digest; expected 'sha256:' and 64 lowercase hex digits, "
                "as `fedmed code-digest` prints"
            )
        return digests


def load_site_policy(path: str | Path, *, check_models: bool = True) -> SitePolicy:
    """Read and validate a site policy.

    ``check_models=False`` leaves ``allowed_models`` unchecked against the registry, which
    imports torch and MONAI (seconds): for steps that never train.

    Raises:
        ConfigError: the file is missing or invalid; the message names file and key.
    """
    return load_yaml_as(Path(path), SitePolicy, context={"check_models": check_models})
