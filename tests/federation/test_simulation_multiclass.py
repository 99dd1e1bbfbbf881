"""End to end for multi-class classification: a real Flower simulation, one-vs-rest AUROC per class.

Three small hospitals of radiographs, each showing one of four classes (normal or one finding);
one row at site-b names a class the task does not know and is skipped with the reason; two DP
rounds; then per-class AUROC and accuracy per site, the macro AUROC pooled over sites, and
subgroup cells per class.
"""

from __future__ import annotations

import csv
import json

import pytest

from fedmed.data.synth_multilabel import synthesize_multiclass_hospitals
from tests.federation.tiny_federation import simulate

SITES = ["site-a", "site-b", "site-c"]
CLASSES = ["normal", "nodule", "effusion", "cardiomegaly"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    """The run's results.json, what the CLI printed (stdout, then stderr) and site-b's node log."""
    folder = tmp_path_factory.mktemp("multiclass-federation")
    root = folder / "hospitals"
    synthesize_multiclass_hospitals(root, n_sites=3, images_per_site=80, image_size=48, seed=3, classes=CLASSES)
    manifest = root / "site-b" / "labels.csv"
    rows = list(csv.DictReader(manifest.open()))
    rows[0]["label"] = "pneumothorax"  # a class the task does not know: skipped, the site goes on
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done, out = simulate(folder, {
        "name": "tiny-multiclass",
        "task": {"kind": "multiclass", "classes": CLASSES},
        "data": {"root": str(root), "sites": SITES, "image_size": 32},
        "model": {"name": "small_cnn"},
        "training": {"rounds": 2, "local_epochs": 2, "batch_size": 16, "learning_rate": 0.5, "momentum": 0.5},
        "privacy": {"target_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0},
        "evaluation": {"bootstrap_samples": 200},
    }, policy={
        "max_epsilon": 40.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3,
        "allowed_models": ["small_cnn"], "min_cell_size": 5,
    })
    node_log = (folder / "hospital-state" / "site-b" / "node.log").read_text()
    return json.loads((out / "results.json").read_text()), done.stdout + done.stderr, node_log


def test_a_multiclass_federation_reports_each_class(run: tuple[dict, str, str]) -> None:
    results, printed, _ = run
    assert results["status"] == "completed"
    assert results["task"]["kind"] == "multiclass" and results["task"]["names"] == CLASSES
    for site in SITES:
        summary = results["sites"][site]
        assert summary["n_train"] + summary["n_test"] == (79 if site == "site-b" else 80)
        for name in CLASSES:
            assert 0.0 <= summary["test"][f"auroc_{name}"] <= 1.0
        assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert results["sites"]["site-b"]["skipped_files"] == 1
    pooled = results["global"]["macro_auroc"]
    assert 0.0 <= pooled <= 1.0
    assert pooled > 0.55  # two DP rounds learn the signs a little (0.67-0.74 in three runs; effusion best)
    assert "pooled test macro AUROC over all sites" in printed


def test_the_unknown_class_is_skipped_with_its_reason(run: tuple[dict, str, str]) -> None:
    *_, node_log = run
    assert "site site-b skipped images/" in node_log
    assert "unknown class (line 2 has 'pneumothorax' in column 'label'; give one of normal, nodule" in node_log


def test_subgroup_cells_hold_every_class(run: tuple[dict, str, str]) -> None:
    evaluation = run[0]["evaluation"]
    for site in SITES:
        cell = evaluation["matrix"]["global"][site]
        assert set(cell) >= {"n", "macro_auroc", "macro_auroc_ci", "accuracy", *(f"auroc_{c}" for c in CLASSES)}
        assert evaluation["comparison"][site]["federated"] == cell["macro_auroc"]
    metrics = {"macro_auroc", "accuracy", *(f"auroc_{c}" for c in CLASSES)}
    assert {f["metric"] for f in evaluation["findings"]} <= metrics
