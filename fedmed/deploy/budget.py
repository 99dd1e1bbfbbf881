"""What a hospital's node says about its privacy budget before it joins.

The budget belongs to the dataset, not to a run: every run on the same training records
spends from it, and once it is gone the site refuses every later run on that data. So
``fedmed node start`` reads the site's own signed ledger for this dataset, and says what
is spent, what is left and, given the planned experiment, how many such runs still fit.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.config import ExperimentConfig, InputConfig, SampleUnit, SitePolicy, VolumeConfig
from fedmed.data import dataset_fingerprint, load_site_data
from fedmed.data.dataset import manifest_names_series
from fedmed.privacy.accountant import epsilon_of
from fedmed.privacy.books import LEDGER_FILE
from fedmed.privacy.ledger import history_for, verify_ledger_file
from fedmed.privacy.plan import plan_privacy, runs_that_fit
from fedmed.secure.keys import load_public_key_file

DEFAULT_IMAGE_SIZE = 64


def budget_report(
    *, site: str, data_dir: Path, cache_dir: Path, state_dir: Path, public_key: Path, policy: SitePolicy,
    experiment: ExperimentConfig | None = None,
) -> str:
    """Lines for the hospital: spent, left, and how many runs like ``experiment`` fit.

    Raises:
        PrivacyError: the site's ledger is broken (the node would refuse to train anyway).
    """
    if experiment is not None:
        spec: InputConfig = experiment.data
    else:  # the records are the same whatever the size; only the kind of record matters
        sample = SampleUnit.SERIES if manifest_names_series(data_dir) else SampleUnit.IMAGE
        spec = InputConfig(sample=sample, image_size=DEFAULT_IMAGE_SIZE, volume=VolumeConfig(shape=(8, 16, 16)))
    data = load_site_data(data_dir, spec=spec, cache_dir=cache_dir)
    fingerprint = dataset_fingerprint(data)
    entries = verify_ledger_file(state_dir / LEDGER_FILE, load_public_key_file(public_key))
    history = history_for(entries, fingerprint)
    spent = epsilon_of(history, delta=policy.delta, accountant=policy.accountant)
    lines = [
        f"Privacy budget of site {site}'s dataset ({len(data.train)} training records, "
        f"fingerprint {fingerprint[:16]}):",
        f"  epsilon {spent:.3f} of {policy.max_epsilon:g} spent over {sum(s.steps for s in history)} "
        f"DP-SGD steps; {max(policy.max_epsilon - spent, 0.0):.3f} left (delta {policy.delta:g}, {policy.accountant}).",
        "  The budget covers every run on these records, for good: when it is spent, this site refuses them all.",
    ]
    if experiment is None:
        lines.append("  Give the planned experiment with --experiment FILE to see how many such runs still fit.")
        return "\n".join(lines)
    training = experiment.training
    terms = experiment.privacy.model_copy(update={"delta": policy.delta, "accountant": policy.accountant})
    federated = plan_privacy(terms, site=site, n_train=len(data.train), batch_size=training.batch_size,
                             local_epochs=training.local_epochs, rounds=training.rounds)
    run = [federated.round_step()] * training.rounds
    if experiment.evaluation.local_models and policy.share_local_model:  # a local-only model spends too
        local = plan_privacy(terms, site=site, n_train=len(data.train), batch_size=training.batch_size,
                             local_epochs=training.local_epochs * training.rounds, rounds=1)
        run.append(local.round_step())
    fit = runs_that_fit(history, run, delta=policy.delta, accountant=policy.accountant, budget=policy.max_epsilon)
    lines.append(f"  Runs like {experiment.name!r} ({training.rounds} rounds) that still fit: {fit}.")
    return "\n".join(lines)
