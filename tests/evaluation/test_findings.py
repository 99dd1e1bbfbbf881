"""Tests for fedmed.evaluation.findings: which gaps become sentences, and the sentences."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fedmed.data.dicom import DicomMetadata
from fedmed.evaluation import describe_group, find_findings
from tests.evaluation.binary_cells import evaluate_subgroups

SUPPRESSED = {"suppressed": True}


def cell(auroc: float, low: float, high: float, n: int = 100) -> dict:
    return {
        "n": n, "prevalence": 0.5, "auroc": auroc, "auroc_ci": [low, high],
        "sensitivity": 0.8, "specificity": 0.8, "ece": 0.05,
    }


def site(overall: dict | None = None, **attributes: dict[str, dict]) -> dict:
    return {
        "overall": overall or cell(0.8, 0.75, 0.85),
        "attributes": {name: {"groups": groups} for name, groups in attributes.items()},
    }


def test_planted_gap_between_sexes_is_found() -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = np.tile([0, 1], n)
    # women: scores separate the classes well; men: barely
    women = rng.normal(0, 1, n) + 2.0 * labels[:n]
    men = rng.normal(0, 1, n) + 0.5 * labels[n:]
    scores = 1 / (1 + np.exp(-np.r_[women, men]))
    metadata = [DicomMetadata(sex="F", patient_id=f"f{i}", manufacturer="Acme") for i in range(n)]
    metadata += [DicomMetadata(sex="M", patient_id=f"m{i}", manufacturer="Acme") for i in range(n)]
    result = evaluate_subgroups(
        labels, scores, metadata, threshold=0.5, min_cell_size=10, confidence=0.95, n_resamples=500
    )
    findings = find_findings({"site-b": result}, min_gap=0.05, confidence=0.95)
    assert len(findings) == 1
    finding = findings[0]
    assert set(finding) == {"site", "attribute", "metric", "worse", "better", "gap", "text"}
    assert finding["metric"] == "auroc"
    assert (finding["site"], finding["attribute"], finding["worse"], finding["better"]) == ("site-b", "sex", "M", "F")
    groups = result["attributes"]["sex"]["groups"]
    assert finding["gap"] == round(groups["F"]["auroc"] - groups["M"]["auroc"], 2)
    pattern = (
        r"AUROC for male patients at site-b is (\d\.\d\d) lower than for female patients "
        r"\((0\.\d{3}), 95% CI (0\.\d{3})-(0\.\d{3}), n=300, vs (0\.\d{3}), 95% CI (0\.\d{3})-(0\.\d{3}), n=300\)\."
    )
    match = re.fullmatch(pattern, finding["text"])
    assert match, finding["text"]
    assert float(match.group(1)) == finding["gap"]
    assert float(match.group(2)) == round(groups["M"]["auroc"], 3)
    assert float(match.group(7)) == round(groups["F"]["auroc_ci"][1], 3)
    json.dumps(findings)


def test_text_from_hand_cells() -> None:
    subgroups = {"site-b": site(sex={"F": cell(0.712, 0.640, 0.781, 70), "M": cell(0.834, 0.792, 0.889, 68)})}
    [finding] = find_findings(subgroups, min_gap=0.05, confidence=0.95)
    assert finding == {
        "site": "site-b", "attribute": "sex", "metric": "auroc", "worse": "F", "better": "M", "gap": 0.12,
        "text": "AUROC for female patients at site-b is 0.12 lower than for male patients "
        "(0.712, 95% CI 0.640-0.781, n=70, vs 0.834, 95% CI 0.792-0.889, n=68).",
    }


def test_confidence_level_in_the_text() -> None:
    subgroups = {"a": site(sex={"F": cell(0.6, 0.5, 0.7), "M": cell(0.9, 0.85, 0.95)})}
    assert "90% CI" in find_findings(subgroups, min_gap=0.05, confidence=0.9)[0]["text"]
    assert "97.5% CI" in find_findings(subgroups, min_gap=0.05, confidence=0.975)[0]["text"]


def test_overlapping_intervals_give_no_finding() -> None:
    subgroups = {"a": site(sex={"F": cell(0.70, 0.60, 0.80), "M": cell(0.85, 0.79, 0.90)})}
    assert find_findings(subgroups, min_gap=0.05, confidence=0.95) == []


def test_gap_below_min_gap_gives_no_finding() -> None:
    subgroups = {"a": site(sex={"F": cell(0.80, 0.79, 0.81), "M": cell(0.84, 0.83, 0.85)})}
    assert find_findings(subgroups, min_gap=0.05, confidence=0.95) == []
    assert len(find_findings(subgroups, min_gap=0.03, confidence=0.95)) == 1


def test_only_best_and_worst_released_groups_are_compared() -> None:
    groups = {
        "<40": cell(0.80, 0.76, 0.84),
        "40-59": cell(0.70, 0.66, 0.74),
        "60-79": cell(0.90, 0.87, 0.93),
        "80+": SUPPRESSED,  # would be worst, but never left the site
        "unknown": {**cell(0.5, 0.5, 0.5), "auroc": None, "auroc_ci": None},
    }
    [finding] = find_findings({"a": site(age_band=groups)}, min_gap=0.05, confidence=0.95)
    assert (finding["worse"], finding["better"], finding["gap"]) == ("40-59", "60-79", 0.2)
    assert finding["text"].startswith("AUROC for patients aged 40-59 at a is 0.20 lower than for patients aged 60-79 (")


def test_site_level_comparison() -> None:
    subgroups = {
        "site-a": site(cell(0.80, 0.76, 0.84, 200)),
        "site-b": site(cell(0.70, 0.65, 0.74, 150)),
        "site-c": site(cell(0.85, 0.81, 0.89, 180)),
        "site-d": site(SUPPRESSED),
    }
    [finding] = find_findings(subgroups, min_gap=0.05, confidence=0.95)
    assert finding == {
        "site": None, "attribute": "site", "metric": "auroc", "worse": "site-b", "better": "site-c", "gap": 0.15,
        "text": "AUROC at site-b is 0.15 lower than at site-c "
        "(0.700, 95% CI 0.650-0.740, n=150, vs 0.850, 95% CI 0.810-0.890, n=180).",
    }


def test_findings_sorted_by_gap_largest_first() -> None:
    subgroups = {
        "a": site(
            cell(0.70, 0.66, 0.74),
            sex={"F": cell(0.70, 0.66, 0.74), "M": cell(0.80, 0.77, 0.83)},
            manufacturer={"Acme": cell(0.60, 0.55, 0.65), "unknown": cell(0.90, 0.86, 0.94)},
        ),
        "b": site(cell(0.90, 0.87, 0.93), age_band={"<40": cell(0.65, 0.6, 0.7), "80+": cell(0.85, 0.8, 0.9)}),
    }
    findings = find_findings(subgroups, min_gap=0.05, confidence=0.95)
    assert [f["gap"] for f in findings] == [0.3, 0.2, 0.2, 0.1]
    assert [f["attribute"] for f in findings][0] == "manufacturer"
    assert findings[0]["text"].startswith(
        "AUROC for images from Acme scanners at a is 0.30 lower than for images with no scanner manufacturer recorded"
    )


def test_no_subgroups_no_findings() -> None:
    assert find_findings({}, min_gap=0.05, confidence=0.95) == []
    assert find_findings({"a": site(SUPPRESSED)}, min_gap=0.05, confidence=0.95) == []


@pytest.mark.parametrize(
    "attribute, name, words",
    [
        ("sex", "F", "female patients"),
        ("sex", "M", "male patients"),
        ("sex", "O", "patients of other sex"),
        ("sex", "unknown", "patients with sex not recorded"),
        ("age_band", "<40", "patients under 40"),
        ("age_band", "40-59", "patients aged 40-59"),
        ("age_band", "60-79", "patients aged 60-79"),
        ("age_band", "80+", "patients aged 80 or over"),
        ("age_band", "unknown", "patients with age not recorded"),
        ("manufacturer", "GE Healthcare", "images from GE Healthcare scanners"),
        ("manufacturer", "unknown", "images with no scanner manufacturer recorded"),
    ],
)
def test_describe_group(attribute: str, name: str, words: str) -> None:
    assert describe_group(attribute, name) == words
