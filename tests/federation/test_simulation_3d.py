"""End to end in 3-D: a real Flower simulation of CT hospitals whose records are series read as volumes.

One run (Flower and Ray start-up dominate): three small CT hospitals, one series at site-a
with a slice missing, two rounds of small_cnn_3d with DP-SGD and secure aggregation, then
cross-site and subgroup evaluation as in 2-D.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydicom import dcmread

from fedmed.config import InputConfig
from fedmed.data import synthesize_ct_hospitals
from fedmed.models import create_model, load_float_state
from tests.federation.tiny_federation import simulate

SITES = ["site-a", "site-b", "site-c"]
SHAPE = [8, 16, 16]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("ct-federation")
    root = folder / "hospitals"
    synthesize_ct_hospitals(root, n_sites=3, studies_per_site=48, slices=8, image_size=24, seed=2)
    gap = root / "site-a" / "studies" / "0000"
    by_position = sorted(gap.glob("*.dcm"), key=lambda p: float(dcmread(p).ImagePositionPatient[2]))
    by_position[3].unlink()  # a missing slice: this series is skipped by name, the rest is used
    done, out = simulate(folder, {
        "name": "tiny-3d",
        "data": {"root": str(root), "sites": SITES, "sample": "series",
                 "volume": {"shape": SHAPE, "window": [-600, 1500]}},
        "model": {"name": "small_cnn_3d"},
        "training": {"rounds": 2, "local_epochs": 2, "batch_size": 16, "learning_rate": 0.5, "momentum": 0.5},
        "privacy": {"target_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0},
        "evaluation": {"bootstrap_samples": 200},
    }, policy={
        "max_epsilon": 30.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3,
        "allowed_models": ["small_cnn_3d"], "min_cell_size": 5,
    }, timeout=600)
    return json.loads((out / "results.json").read_text()), out


def test_a_3d_federation_trains_on_volumes(run: tuple[dict, Path]) -> None:
    results, out = run
    assert results["status"] == "completed" and [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["config"]["data"]["sample"] == "series"
    for site in SITES:
        summary = results["sites"][site]
        assert summary["n_train"] + summary["n_test"] == (47 if site == "site-a" else 48)
        assert summary["rounds_trained"] == 2 and 0.0 <= summary["auroc"] <= 1.0
    assert results["sites"]["site-a"]["skipped_files"] == 1  # the series with the missing slice
    assert all(r["secure_aggregation"]["sites"] == SITES for r in results["rounds"])
    saved = torch.load(out / "model.pt", weights_only=True)
    spec = InputConfig.model_validate(saved["input"])
    assert spec.spatial_shape == tuple(SHAPE)
    model = create_model(saved["model"], spec=spec)
    load_float_state(model, saved["state_dict"])
    assert model(torch.rand(2, 1, *SHAPE)).shape == (2, 1)


def test_cross_site_and_subgroups_work_as_in_2d(run: tuple[dict, Path]) -> None:
    results, out = run
    evaluation = results["evaluation"]
    for site in SITES:
        cell = evaluation["matrix"]["global"][site]
        assert cell["n"] == results["sites"][site]["n_test"] and 0.0 <= cell["auroc"] <= 1.0
        attributes = evaluation["subgroups"][site]["attributes"]
        assert {"sex", "age_band", "manufacturer"} <= set(attributes)
    assert (out / "report.html").is_file()
