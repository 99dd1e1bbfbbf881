"""A site's privacy books survive kills, and refuse when tampered with or lost.

Each round runs in its own process, as Flower's SuperNode starts a fresh ClientApp
process per message; crashes are real SIGKILLs at the worst moments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmed.config import InputConfig
from fedmed.data import load_site_data, synthesize_hospitals
from fedmed.federation.node import SIGNING_KEY_FILE
from fedmed.privacy import epsilon_of, plan_privacy
from fedmed.privacy.accountant import MechanismStep
from fedmed.secure.approval import code_digest
from fedmed.secure.keys import generate_signing_key

WORKER = Path(__file__).with_name("site_worker.py")
sys.path.insert(0, str(WORKER.parent))
from site_worker import IMAGE_SIZE, PLAN  # noqa: E402


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospital")
    synthesize_hospitals(root, n_sites=1, images_per_site=60, image_size=32, seed=3)
    return root / "site-a"


def approved() -> dict[str, list[str]]:
    """A hospital's node trains only code its policy approves: this code."""
    return {"approved_code": [code_digest()]}


@pytest.fixture()
def books(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(
        {"max_epsilon": 10.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.1, **approved()}
    ))
    generate_signing_key(tmp_path / "state" / SIGNING_KEY_FILE)  # provisioned at a hospital
    return tmp_path / "state", policy


def run_round(
    site_dir: Path, books: tuple[Path, Path], server_round: int, crash: str | None = None
) -> dict[str, object] | None:
    state_dir, policy = books
    args = [sys.executable, str(WORKER), str(site_dir), str(state_dir), str(policy), str(server_round)]
    done = subprocess.run(args + ([crash] if crash else []), capture_output=True, text=True, timeout=300)
    if crash:
        assert done.returncode == -9, done.stderr  # killed, as intended
        return None
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def epsilon_after(site_dir: Path, rounds: int) -> float:
    data = load_site_data(site_dir, spec=InputConfig(image_size=IMAGE_SIZE))
    plan = plan_privacy(
        PLAN.privacy, site="site-a", n_train=len(data.train), batch_size=PLAN.training.batch_size,
        local_epochs=PLAN.training.local_epochs, rounds=PLAN.training.rounds,
    )
    steps = MechanismStep(plan.noise_multiplier, plan.sample_rate, rounds * plan.steps_per_round)
    return epsilon_of([steps], delta=plan.delta, accountant=plan.accountant)


def test_killed_after_training_spends_nothing_and_the_next_round_continues(
    site_dir: Path, books: tuple[Path, Path]
) -> None:
    first = run_round(site_dir, books, 1)
    assert first["epsilon"] == pytest.approx(epsilon_after(site_dir, 1), rel=1e-9)
    run_round(site_dir, books, 2, crash="after-train")  # nothing left the site
    second = run_round(site_dir, books, 2)
    assert second["epsilon"] == pytest.approx(epsilon_after(site_dir, 2), rel=1e-9)


def test_killed_between_ledger_and_state_keeps_the_logged_spend(site_dir: Path, books: tuple[Path, Path]) -> None:
    run_round(site_dir, books, 1)
    run_round(site_dir, books, 2, crash="after-ledger")  # the round is in the signed ledger
    third = run_round(site_dir, books, 3)
    assert third["epsilon"] == pytest.approx(epsilon_after(site_dir, 3), rel=1e-9)


def _state_file(books: tuple[Path, Path]) -> Path:
    (state,) = (books[0] / "privacy").glob("*.json")
    return state


def test_edited_state_file_refuses(site_dir: Path, books: tuple[Path, Path]) -> None:
    run_round(site_dir, books, 1)
    state = _state_file(books)
    recorded = json.loads(state.read_text())
    recorded["history"][0][2] = 1  # pretend only one step was taken
    state.write_text(json.dumps(recorded))
    assert "does not match the signed ledger" in run_round(site_dir, books, 2)["refused"]


def test_lost_state_file_refuses_rather_than_restarting_at_zero(site_dir: Path, books: tuple[Path, Path]) -> None:
    run_round(site_dir, books, 1)
    _state_file(books).unlink()
    assert "is missing, but the ledger records 1 round" in run_round(site_dir, books, 2)["refused"]


def test_removed_last_ledger_entry_refuses(site_dir: Path, books: tuple[Path, Path]) -> None:
    run_round(site_dir, books, 1)
    run_round(site_dir, books, 2)
    ledger = books[0] / "ledger.jsonl"
    ledger.write_text(ledger.read_text().splitlines(keepends=True)[0])
    assert "does not match the signed ledger" in run_round(site_dir, books, 3)["refused"]


def test_site_at_its_budget_refuses(site_dir: Path, books: tuple[Path, Path]) -> None:
    state_dir, policy = books
    budget = (epsilon_after(site_dir, 1) + epsilon_after(site_dir, 2)) / 2
    policy.write_text(yaml.safe_dump(
        {"max_epsilon": budget, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.1, **approved()}
    ))
    run_round(site_dir, books, 1)
    refusal = run_round(site_dir, books, 2)["refused"]
    assert "over the budget" in refusal and "site-a" in refusal


def test_terms_outside_the_policy_are_refused(site_dir: Path, books: tuple[Path, Path]) -> None:
    _, policy = books
    policy.write_text(yaml.safe_dump(
        {"max_epsilon": 10.0, "delta": 1e-4, "max_grad_norm": 0.5, "min_noise_multiplier": 0.1,
         "allowed_models": ["densenet121"], **approved()}
    ))
    refusal = run_round(site_dir, books, 1)["refused"]
    assert "delta 0.001 is above the policy's 0.0001" in refusal
    assert "clip norm 1 is above the policy's 0.5" in refusal
    assert "model small_cnn is not among the policy's allowed_models" in refusal
