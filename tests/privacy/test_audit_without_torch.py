"""`fedmed audit` on an auditor's machine: neither torch nor Opacus installed, dp_accounting recomputes.

The command runs in a child Python whose ``PYTHONPATH`` starts with a folder holding a
``torch`` and an ``opacus`` package that refuse to import, as they would where they are
not installed; the ledger it audits is written here, by the same code a site runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.privacy.accountant import MechanismStep, epsilon_of
from fedmed.privacy.ledger import append_entry
from fedmed.secure.manifest import write_manifest

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "opacus")
ROUND = MechanismStep(3.0, 0.125, 8)  # as in test_audit: sigma 3 keeps PLD fast
DELTA = 1e-5


@pytest.fixture
def auditor_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where ``import torch`` and ``import opacus`` fail."""
    shadow = tmp_path / "not-installed"
    for name in BLOCKED:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}' (blocked for the test)\", name={name!r})\n",
            encoding="utf-8",
        )
    env = dict(os.environ)
    # the checkout under test, not whichever fedmed the environment has installed
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def python(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def honest_run(folder: Path) -> Path:
    """A run folder with one site's ledger of two rounds and the consortium's manifest."""
    key = Ed25519PrivateKey.generate()
    ledger = folder / "run" / "ledgers" / "site-a.jsonl"
    for r in range(2):
        append_entry(
            ledger,
            key,
            now=datetime(2025, 3, 1, tzinfo=UTC),
            site="site-a",
            run_id="run-1",
            round=r + 1,
            dataset_fingerprint="ab" * 8,
            n_records=450,
            model_hash=hashlib.sha256(b"m%d" % r).hexdigest(),
            update_hash=hashlib.sha256(b"u%d" % r).hexdigest(),
            noise_multiplier=ROUND.noise_multiplier,
            sample_rate=ROUND.sample_rate,
            steps=ROUND.steps,
            max_grad_norm=1.0,
            delta=DELTA,
            accountant="prv",
            epsilon=epsilon_of([ROUND] * (r + 1), delta=DELTA, accountant="prv"),
            budget_epsilon=2.0,
        )
    write_manifest(folder / "consortium-keys.json", {"site-a": key.public_key()})
    return folder / "run"


def test_the_blocker_makes_torch_and_opacus_unimportable(auditor_env: dict[str, str], tmp_path: Path) -> None:
    for name in BLOCKED:
        done = python(auditor_env, "-c", f"import {name}", cwd=tmp_path)
        assert done.returncode != 0 and "blocked for the test" in done.stderr


def test_fedmed_audit_passes_an_honest_ledger_without_torch_or_opacus(
    auditor_env: dict[str, str], tmp_path: Path
) -> None:
    run = honest_run(tmp_path)
    done = python(
        auditor_env, "-m", "fedmed", "audit", str(run), "--manifest", str(tmp_path / "consortium-keys.json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  site-a  2 ledger entries" in done.stdout
    assert "(PLD)" in done.stdout and "(RDP)" in done.stdout and "history: 16 steps" in done.stdout
    assert "PASS: 1 of 1 site ledgers pass" in done.stdout


def test_the_help_lists_audit_without_torch(auditor_env: dict[str, str], tmp_path: Path) -> None:
    done = python(auditor_env, "-m", "fedmed", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit" in done.stdout and "simulate" in done.stdout


def test_a_training_command_says_what_is_missing(auditor_env: dict[str, str], tmp_path: Path) -> None:
    done = python(auditor_env, "-m", "fedmed", "models", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "`fedmed models` needs torch, which is not installed here" in done.stderr
