"""End to end for segmentation: a real Flower simulation of hospitals whose targets are DICOM SEG masks.

One 2-D run (Flower and Ray start-up dominate): three small hospitals written with highdicom
SEG masks (site-c writes some as NIfTI), one mask at site-a replaced by the SEG of another
image, two rounds of a DP UNet with secure aggregation, local models and a pooled
baseline, then cross-site and subgroup evaluation on Dice. The report is rendered in
headless Chromium where there is one (CI installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fedmed.config import InputConfig, TaskConfig
from fedmed.data.synth_seg import synthesize_segmentation_hospitals
from fedmed.models import create_model, load_float_state
from tests.federation.tiny_federation import simulate

SITES = ["site-a", "site-b", "site-c"]
SIZE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("segmentation-federation")
    root = folder / "hospitals"
    synthesize_segmentation_hospitals(root, n_sites=3, images_per_site=80, image_size=SIZE, seed=1)
    manifest = (root / "site-a" / "labels.csv").read_text().splitlines()
    first, second = manifest[1].split(","), manifest[2].split(",")
    shutil.copy(root / "site-a" / second[1], root / "site-a" / first[1])  # the SEG of another image
    done, out = simulate(folder, {
        "name": "tiny-segmentation",
        "task": {"kind": "segmentation", "structures": ["lesion"]},
        "data": {"root": str(root), "sites": SITES, "image_size": SIZE},
        "model": {"name": "unet"},
        "training": {"rounds": 2, "local_epochs": 2, "batch_size": 16, "learning_rate": 1.0, "momentum": 0.5},
        "privacy": {"target_epsilon": 20.0, "delta": 1e-3, "max_grad_norm": 1.0},
        "evaluation": {"bootstrap_samples": 200, "local_models": True, "pooled_baseline": True},
    }, policy={
        "max_epsilon": 40.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.3,
        "allowed_models": ["unet"], "min_cell_size": 5, "share_local_model": True,
    })
    assert "pooled test Dice over all sites" in done.stdout
    return json.loads((out / "results.json").read_text()), out


def test_a_segmentation_federation_trains_on_seg_masks(run: tuple[dict, Path]) -> None:
    results, out = run
    assert results["status"] == "completed" and [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["task"]["kind"] == "segmentation" and results["task"]["metric"]["key"] == "dice"
    for site in SITES:
        summary = results["sites"][site]
        assert summary["n_train"] + summary["n_test"] == (79 if site == "site-a" else 80)
        assert summary["rounds_trained"] == 2
        assert 0.0 <= summary["dice"] <= 1.0 and summary["test"]["hd95_lesion"] >= 0.0
    assert results["sites"]["site-a"]["skipped_files"] == 1  # the mask of another image
    assert all(r["secure_aggregation"]["sites"] == SITES for r in results["rounds"])
    pooled = results["global"]["dice"]
    dices = [results["sites"][s]["dice"] for s in SITES]
    assert min(dices) - 1e-9 <= pooled <= max(dices) + 1e-9  # a mean of the sites' case means
    assert pooled > 0.2  # two DP rounds on 32x32 images already find the lesions
    saved = torch.load(out / "model.pt", weights_only=True)
    task = TaskConfig.model_validate(saved["task"])
    model = create_model(saved["model"], spec=InputConfig.model_validate(saved["input"]), outputs=1 + len(task.names))
    load_float_state(model, saved["state_dict"])
    assert model(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 2, SIZE, SIZE)


def test_cross_site_subgroups_and_findings_use_dice(run: tuple[dict, Path]) -> None:
    results, _ = run
    evaluation = results["evaluation"]
    assert [m["id"] for m in evaluation["models"]] == ["global", "local:site-a", "local:site-b", "local:site-c",
                                                       "pooled"]
    for site in SITES:
        cell = evaluation["matrix"]["global"][site]
        assert cell["n"] == results["sites"][site]["n_test"]
        low, high = cell["dice_ci"]
        assert low <= cell["dice"] <= high
        assert evaluation["comparison"][site]["federated"] == cell["dice"]
        sex = evaluation["subgroups"][site]["attributes"]["sex"]
        assert sex["equalized_odds_difference"] is None  # a binary metric, not a segmentation one
        released = [g for g in sex["groups"].values() if not g.get("suppressed")]
        assert all("dice" in g and "hd95_lesion" in g for g in released)
    assert all(f["metric"] == "dice" for f in evaluation["findings"])


def test_the_report_names_dice(run: tuple[dict, Path]) -> None:
    _, out = run
    page = (out / "report.html").read_text()
    assert "Final test Dice" in page and "Test Dice of each model" in page and "AUROC" not in page
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    shot = out / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={out / 'profile'}", "--window-size=1200,3000", f"--screenshot={shot}",
         (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] == 3000 and pixels[..., :3].std() > 0.05  # drawn, not blank
