"""What `fedmed node start` says about a dataset's budget: spent, left, and runs that still fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed.config import ExperimentConfig, InputConfig, SampleUnit, SitePolicy, VolumeConfig
from fedmed.data import dataset_fingerprint, load_site_data, synthesize_ct_hospitals, synthesize_hospitals
from fedmed.deploy.budget import budget_report
from fedmed.privacy import epsilon_of, plan_privacy
from fedmed.privacy.accountant import MechanismStep
from fedmed.privacy.books import PrivacyBooks
from fedmed.secure.keys import generate_signing_key, public_key_path

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

EXPERIMENT = ExperimentConfig.model_validate({
    "name": "planned", "data": {"root": "/unused", "sites": ["site-a"], "image_size": 16},
    "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
    "privacy": {"target_epsilon": 2.0, "delta": 1e-3},
})


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    synthesize_hospitals(tmp_path / "data", n_sites=1, images_per_site=40, image_size=32, seed=9)
    key = tmp_path / "keys" / "site-ed25519.pem"
    generate_signing_key(key)
    return tmp_path / "data" / "site-a", tmp_path / "state", key


def report(site: tuple[Path, Path, Path], budget: float, experiment: ExperimentConfig | None = EXPERIMENT) -> str:
    data, state, key = site
    policy = SitePolicy(max_epsilon=budget, delta=1e-3, max_grad_norm=1.0, min_noise_multiplier=0.1)
    return budget_report(site="site-a", data_dir=data, cache_dir=state / "cache", state_dir=state,
                         public_key=public_key_path(key), policy=policy, experiment=experiment)


def test_a_fresh_dataset_has_its_whole_budget_and_room_for_runs(site: tuple[Path, Path, Path]) -> None:
    text = report(site, 10.0)
    assert "epsilon 0.000 of 10 spent" in text and "10.000 left" in text
    assert "refuses them all" in text
    fit = int(text.rsplit("still fit: ", 1)[1].rstrip("."))
    assert 2 <= fit < 50  # a run at epsilon 2 fits more than once in 10, runs composing sublinearly


def test_spend_on_the_books_is_counted(site: tuple[Path, Path, Path]) -> None:
    data_dir, state, key_path = site
    from fedmed.secure.keys import load_signing_key

    data = load_site_data(data_dir, spec=InputConfig(image_size=16), cache_dir=state / "cache")
    plan = plan_privacy(EXPERIMENT.privacy, site="site-a", n_train=len(data.train), batch_size=16,
                        local_epochs=1, rounds=2)
    books = PrivacyBooks(state, site="site-a", fingerprint=dataset_fingerprint(data), accountant="prv",
                         key=load_signing_key(key_path))
    books.spent()
    for r in (1, 2):  # one whole planned run already spent
        books.record(site="site-a", run_id="earlier", round=r, n_records=len(data.train), model_hash="a" * 64,
                     update_hash="b" * 64, noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                     steps=plan.steps_per_round, max_grad_norm=1.0, delta=1e-3, accountant="prv", epsilon=2.0,
                     budget_epsilon=2.5)
    spent = epsilon_of([MechanismStep(plan.noise_multiplier, plan.sample_rate, 2 * plan.steps_per_round)],
                       delta=1e-3, accountant="prv")
    text = report(site, 2.5)
    assert f"epsilon {spent:.3f} of 2.5 spent" in text
    assert "that still fit: 0." in text  # a second run at epsilon 2 composes to more than 2.5


def test_without_the_experiment_it_says_how_to_ask(site: tuple[Path, Path, Path]) -> None:
    assert "--experiment FILE" in report(site, 5.0, experiment=None)


def test_a_series_dataset_is_counted_by_series_without_the_experiment(tmp_path: Path) -> None:
    """node start without --experiment reads a CT site's records as series, the way training will."""
    (data_dir,) = synthesize_ct_hospitals(tmp_path / "data", n_sites=1, studies_per_site=8, slices=4, image_size=16)
    key = tmp_path / "keys" / "site-ed25519.pem"
    generate_signing_key(key)
    text = report((data_dir, tmp_path / "state", key), 5.0, experiment=None)
    spec = InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=(8, 16, 16)))
    data = load_site_data(data_dir, spec=spec)
    assert f"({len(data.train)} training records, fingerprint {dataset_fingerprint(data)[:16]})" in text
