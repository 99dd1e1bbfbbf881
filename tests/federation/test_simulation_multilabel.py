"""End to end for multi-label classification: a real Flower simulation, one AUROC per finding.

Three small hospitals of radiographs with three findings each; one row at site-b loses its
effusion label and is skipped with the reason; two DP rounds; then per-label AUROC, the
macro average pooled over sites, and subgroup cells per label.
"""

from __future__ import annotations

import csv
import json

import pytest

from fedmed.data.synth_multilabel import synthesize_multilabel_hospitals
from tests.federation.tiny_federation import simulate

SITES = ["site-a", "site-b", "site-c"]
LABELS = ["nodule", "effusion", "cardiomegaly"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("multilabel-federation")
    root = folder / "hospitals"
    synthesize_multilabel_hospitals(root, n_sites=3, images_per_site=80, image_size=48, seed=3, labels=LABELS)
    manifest = root / "site-b" / "labels.csv"
    rows = list(csv.DictReader(manifest.open()))
    rows[0]["effusion"] = ""  # a row missing a label: skipped, the site goes on
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done, out = simulate(folder, {
        "name": "tiny-multilabel",
        "task": {"kind": "multilabel", "labels": LABELS},
        "data": {"root": str(root), "sites": SITES, "image_size": 32},
        "model": {"name": "small_cnn"},
        "training": {"rounds": 2, "local_epochs": 2, "batch_size": 16, "learning_rate": 0.5, "momentum": 0.5},
        "privacy": {"target_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0},
        "evaluation": {"bootstrap_samples": 200},
    }, policy={
        "max_epsilon": 40.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3,
        "allowed_models": ["small_cnn"], "min_cell_size": 5,
    })
    assert "pooled test macro AUROC over all sites" in done.stdout
    return json.loads((out / "results.json").read_text())


def test_a_multilabel_federation_reports_each_label(results: dict) -> None:
    assert results["status"] == "completed"
    assert results["task"]["kind"] == "multilabel" and results["task"]["names"] == LABELS
    for site in SITES:
        summary = results["sites"][site]
        assert summary["n_train"] + summary["n_test"] == (79 if site == "site-b" else 80)
        for label in LABELS:
            assert 0.0 <= summary["test"][f"auroc_{label}"] <= 1.0
    assert results["sites"]["site-b"]["skipped_files"] == 1
    pooled = results["global"]["macro_auroc"]
    assert 0.0 <= pooled <= 1.0
    assert pooled > 0.55  # two DP rounds learn the large signs (cardiomegaly, effusion) a little


def test_subgroup_cells_hold_every_label(results: dict) -> None:
    evaluation = results["evaluation"]
    for site in SITES:
        cell = evaluation["matrix"]["global"][site]
        assert set(cell) >= {"n", "macro_auroc", "macro_auroc_ci", *(f"auroc_{label}" for label in LABELS)}
        assert evaluation["comparison"][site]["federated"] == cell["macro_auroc"]
    assert {f["metric"] for f in evaluation["findings"]} <= {"macro_auroc", *(f"auroc_{label}" for label in LABELS)}
