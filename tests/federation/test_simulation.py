"""End to end: `fedmed simulate` runs real Flower simulations (SuperLink, Ray) with DP-SGD
and secure aggregation.

Each run costs Flower and Ray start-up (about 20 s here), so the federations are tiny
and the cases are few: a healthy federation with a bad file and a broken site, and a
federation where every site refuses to train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedmed.config import InputConfig
from fedmed.data import synthesize_hospitals
from fedmed.models import create_model, load_float_state

FEDMED = [sys.executable, "-m", "fedmed"]


def write_policy(path: Path, **terms: object) -> Path:
    policy = {"max_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3, **terms}
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


def write_config(
    path: Path, data_root: Path, *, policy: dict[str, object] | None = None, **privacy: object
) -> Path:
    """A tiny experiment whose hospitals keep their books (and policy) in ``path``'s folder."""
    folder = path.parent
    config = {
        "name": "tiny",
        "data": {"root": str(data_root), "sites": ["site-a", "site-b", "site-c", "site-d"], "image_size": 32},
        "model": {"name": "small_cnn"},
        "training": {
            "rounds": 3, "local_epochs": 2, "batch_size": 16, "learning_rate": 0.5,
            "momentum": 0.5, "min_sites": 2,
        },
        "privacy": {"target_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0, **privacy},
        "simulation": {
            "site_policy": str(write_policy(folder / "site-policy.yaml", **(policy or {}))),
            "state_root": str(folder / "hospital-state"),
        },
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def simulate(config: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDMED, "simulate", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small hospitals; site-a has one truncated file, site-c no readable image.

    Three healthy sites, because secure aggregation never sums fewer than three.
    """
    root = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(root, n_sites=4, images_per_site=120, image_size=48, seed=1)
    first = sorted((root / "site-a" / "images").glob("*.dcm"))[0]
    first.write_bytes(first.read_bytes()[:400])
    for image in (root / "site-c" / "images").glob("*.dcm"):
        image.write_bytes(b"not a DICOM file")
    return root


@pytest.fixture(scope="module")
def federation(
    hospitals: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "out"
    completed = simulate(write_config(tmp / "tiny.yaml", hospitals), out, tmp)
    return completed, out


def test_federation_completes_and_reports_per_site(federation: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    completed, out = federation
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for site in ("site-a", "site-b", "site-d"):
        summary = results["sites"][site]
        assert summary["rounds_trained"] == 3
        assert summary["n_train"] + summary["n_test"] + (summary["skipped_files"] or 0) == 120
        assert 0 < summary["epsilon"] <= 20.0 + 0.02
        assert summary["delta"] == 1e-3
        assert 0.0 <= summary["auroc"] <= 1.0
        epsilons = [r["sites"][site]["epsilon"] for r in results["rounds"]]
        assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]  # cumulative
    assert results["sites"]["site-a"]["skipped_files"] == 1
    healthy = [results["sites"][site]["auroc"] for site in ("site-a", "site-b", "site-d")]
    assert sum(healthy) / 3 >= 0.75  # each site's own test AUROC: the model learned
    # pooled from score groups of at least 10 patients: with 30 test images a site that is
    # three groups each, so pairs across sites mostly tie; informative, but coarse
    assert 0.5 < results["global"]["auroc"] <= 1.0
    # secure aggregation is on by default: every round's model is the masked sum of a, b and d
    assert all(r["secure_aggregation"]["sites"] == ["site-a", "site-b", "site-d"] for r in results["rounds"])
    assert "masked sum of 3 sites (threshold 3)" in completed.stdout
    assert results["global"]["n_test"] == sum(results["sites"][s]["n_test"] for s in ("site-a", "site-b", "site-d"))
    # the sites' DP randomness is their own: the plan's seed decided nothing
    assert results["unsafe_reproducible"] is False


def test_broken_site_refuses_with_its_reason_and_the_rest_carry_on(
    federation: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    completed, out = federation
    results = json.loads((out / "results.json").read_text())
    assert results["sites"]["site-c"]["rounds_trained"] == 0
    reasons = [f["reason"] for r in results["rounds"] for f in r["failures"]]
    assert len(reasons) == 3  # train, three rounds (a site evaluates only rounds it trained in)
    assert all("site-c" in reason and "not a DICOM file" in reason for reason in reasons)
    (at_the_end,) = results["evaluation"]["failures"]  # and the cross-site evaluation
    assert at_the_end["stage"] == "cross-site evaluation" and "not a DICOM file" in at_the_end["reason"]
    assert results["evaluation"]["matrix"]["global"]["site-c"] is None
    assert results["evaluation"]["matrix"]["global"]["site-a"]["n"] == results["sites"]["site-a"]["n_test"]
    assert "site-c" in completed.stdout


def test_privacy_books_are_on_the_site_disk(federation: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = federation
    books = out.parent / "hospital-state" / "site-a"
    histories = list((books / "privacy").glob("*.json"))
    assert len(histories) == 1  # one dataset
    recorded = json.loads(histories[0].read_text())
    assert recorded["accountant"] == "prv"
    assert sum(steps for _, _, steps in recorded["history"]) > 0
    assert len((books / "ledger.jsonl").read_text().splitlines()) == 3
    assert (books / "keys" / "site-ed25519.pem").stat().st_mode & 0o777 == 0o600


def test_run_folder_passes_the_audit_and_states_the_guarantee(
    federation: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = federation
    audited = subprocess.run([*FEDMED, "audit", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert report["verdict"] == "pass"
    assert sorted(s["site"] for s in report["sites"]) == ["site-a", "site-b", "site-d"]
    assert {s["key_source"] for s in report["sites"]} == {"manifest"}
    results = json.loads((out / "results.json").read_text())
    for site in report["sites"]:
        privacy = results["sites"][site["site"]]["privacy"]
        assert privacy["statement"] == site["statement"]
        assert privacy["epsilon"] == site["reported_epsilon"]


def test_model_file_holds_the_float_weights(federation: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = federation
    saved = torch.load(out / "model.pt", weights_only=True)
    model = create_model(saved["model"], spec=InputConfig.model_validate(saved["input"]))
    load_float_state(model, saved["state_dict"])


def test_every_site_refusing_stops_the_run_cleanly(hospitals: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "greedy-delta.yaml", hospitals, policy={"delta": 0.5}, delta=0.5)
    completed = simulate(config, tmp_path / "out", tmp_path)
    assert completed.returncode == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "stopped"
    assert "only 0 site(s) completed train" in results["status_reason"]
    reasons = [f["reason"] for f in results["rounds"][0]["failures"]]
    assert any("site-a" in r and "delta 0.5 is not below 1/N" in r for r in reasons)
    assert "Traceback" not in completed.stdout + completed.stderr
