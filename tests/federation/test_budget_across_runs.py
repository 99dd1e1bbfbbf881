"""The budget belongs to the data: a second run starts from the spend the first left.

Two real Flower simulations over the same hospitals and the same hospital state: the
first spends most of the budget; the second trains one more round from there, then
every site refuses and the run ends cleanly with a status saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmed.config import InputConfig, PrivacyConfig
from fedmed.data import load_site_data, synthesize_hospitals
from fedmed.privacy import epsilon_of, plan_privacy
from fedmed.privacy.accountant import MechanismStep

ROUNDS, EPOCHS, BATCH, TARGET, DELTA = 2, 1, 16, 2.0, 1e-3


def epsilon_after(n_train: int, rounds: int) -> float:
    plan = plan_privacy(
        PrivacyConfig(target_epsilon=TARGET, delta=DELTA), site="x", n_train=n_train,
        batch_size=BATCH, local_epochs=EPOCHS, rounds=ROUNDS,
    )
    steps = MechanismStep(plan.noise_multiplier, plan.sample_rate, rounds * plan.steps_per_round)
    return epsilon_of([steps], delta=DELTA, accountant="prv")


def test_second_run_continues_from_the_first_and_stops_at_the_budget(tmp_path: Path) -> None:
    synthesize_hospitals(tmp_path / "hospitals", n_sites=2, images_per_site=60, image_size=32, seed=5)
    n_train = {
        s: len(load_site_data(tmp_path / "hospitals" / s, spec=InputConfig(image_size=32)).train)
        for s in ("site-a", "site-b")
    }
    # a budget that allows exactly one round more than the first run's two
    budget = min((epsilon_after(n, 3) + epsilon_after(n, 4)) / 2 for n in n_train.values())
    assert all(epsilon_after(n, 3) < budget < epsilon_after(n, 4) for n in n_train.values())
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(
        {"max_epsilon": budget, "delta": DELTA, "max_grad_norm": 1.0, "min_noise_multiplier": 0.1}
    ))
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "name": "budget",
        "data": {"root": "hospitals", "sites": ["site-a", "site-b"], "image_size": 32},
        "training": {"rounds": ROUNDS, "local_epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 0.1},
        "privacy": {"target_epsilon": TARGET, "delta": DELTA},
        "simulation": {"site_policy": "policy.yaml", "state_root": "hospital-state"},
    }))

    def simulate(out: str) -> tuple[int, dict]:
        done = subprocess.run(
            [sys.executable, "-m", "fedmed", "simulate", str(config), "--out", str(tmp_path / out)],
            capture_output=True, text=True, timeout=600,
        )
        return done.returncode, json.loads((tmp_path / out / "results.json").read_text())

    code, first = simulate("run-1")
    assert code == 0 and first["status"] == "completed"
    for site, n in n_train.items():
        assert first["sites"][site]["epsilon"] == pytest.approx(epsilon_after(n, 2), rel=1e-9)

    code, second = simulate("run-2")
    assert code == 1 and second["status"] == "stopped"
    assert "round 2: only 0 site(s) completed train" in second["status_reason"]
    for site, n in n_train.items():
        assert second["rounds"][0]["sites"][site]["epsilon"] == pytest.approx(epsilon_after(n, 3), rel=1e-9)
    refusals = [f["reason"] for f in second["rounds"][1]["failures"]]
    assert len(refusals) == 2 and all("over the budget" in r for r in refusals)

    audited = subprocess.run(
        [sys.executable, "-m", "fedmed", "audit", str(tmp_path / "run-2"), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert audited.returncode == 0, audited.stdout + audited.stderr
    for site in json.loads(audited.stdout)["sites"]:
        assert site["entries"] == 3  # the first run's two rounds came with the second run's reply
        assert site["verdict"] == "pass"
