"""End to end in Flower's simulation engine: cross-site evaluation with every model and
baseline, and the bias planted in the demo data (site-b's female patients) found.

One federation plus its three leave-one-site-out federations: four engine runs, about
four minutes here, so there is one run and several checks of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmed.data import synthesize_hospitals
from tests.report.conftest import numbers_missing_from

SITES = ["site-a", "site-b", "site-c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, dict]:
    folder = tmp_path_factory.mktemp("bias")
    # DP noise is truly random, so the finding is a statistical event. With 320 images per
    # site it was missed in 2 of 5 runs (intervals overlapping); with 480 it was found in
    # 5 of 5, the intervals at least 0.07 apart.
    synthesize_hospitals(folder / "data", n_sites=3, images_per_site=480, image_size=48, test_fraction=0.5, seed=2)
    policy = {
        "max_epsilon": 30.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3,
        "require_secure_aggregation": False, "share_local_model": True,
    }
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    config = {
        "name": "bias",
        "data": {"root": "data", "sites": SITES, "image_size": 32},
        "training": {"rounds": 3, "local_epochs": 2, "batch_size": 32, "learning_rate": 0.5, "momentum": 0.5},
        "privacy": {"target_epsilon": 8.0, "delta": 1e-3},
        "secure_aggregation": {"enabled": False},
        "evaluation": {"local_models": True, "pooled_baseline": True, "leave_one_site_out": True},
        "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
    }
    (folder / "bias.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = folder / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "fedmed", "simulate", str(folder / "bias.yaml"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "XDG_CACHE_HOME": str(folder / "cache")},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed, folder, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_the_planted_bias_is_found_in_plain_words(run: tuple[subprocess.CompletedProcess[str], Path, dict]) -> None:
    completed, _, results = run
    sex_findings = [f for f in results["evaluation"]["findings"] if f["attribute"] == "sex"]
    assert [(f["site"], f["worse"], f["better"]) for f in sex_findings] == [("site-b", "F", "M")]
    text = sex_findings[0]["text"]
    assert text.startswith("AUROC for female patients at site-b is ") and "lower than for male patients" in text
    assert text in completed.stdout


def test_every_model_and_baseline_is_evaluated_at_every_site(
    run: tuple[subprocess.CompletedProcess[str], Path, dict],
) -> None:
    _, _, results = run
    evaluation = results["evaluation"]
    expected = ["global", *(f"local:{s}" for s in SITES), "pooled", *(f"without:{s}" for s in SITES)]
    assert [m["id"] for m in evaluation["models"]] == expected
    for model in expected:
        for site in SITES:
            assert 0.0 <= evaluation["matrix"][model][site]["auroc"] <= 1.0, (model, site)
    for site in SITES:
        comparison = evaluation["comparison"][site]
        assert comparison["unseen"] == evaluation["matrix"][f"without:{site}"][site]["auroc"]
        assert None not in comparison.values()


def test_baselines_spend_nothing_from_the_hospitals_books(
    run: tuple[subprocess.CompletedProcess[str], Path, dict],
) -> None:
    _, folder, results = run
    for site in SITES:
        ledger = (folder / "out" / "ledgers" / f"{site}.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in ledger] == [1, 2, 3, 0]  # three rounds, then the local model
        assert results["sites"][site]["privacy"]["epsilon"] > results["sites"][site]["epsilon"]


def test_the_report_shows_only_numbers_from_results_json(
    run: tuple[subprocess.CompletedProcess[str], Path, dict],
) -> None:
    _, folder, results = run
    page = (folder / "out" / "report.html").read_text(encoding="utf-8")
    assert "AUROC for female patients at site-b" in page
    assert numbers_missing_from(page, results) == []
