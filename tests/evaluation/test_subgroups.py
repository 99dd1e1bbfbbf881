"""Tests for fedmed.evaluation.subgroups: cells, patient-counted suppression, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from fedmed.data.dicom import DicomMetadata, read_dicom_metadata
from fedmed.evaluation import ATTRIBUTES, roc_auc
from tests.evaluation.binary_cells import evaluate_cell, evaluate_subgroups

SETTINGS = dict(threshold=0.5, min_cell_size=10, confidence=0.95, n_resamples=200)
CELL_KEYS = {"n", "prevalence", "auroc", "auroc_ci", "sensitivity", "specificity", "ece"}


def patients(count: int, *, prefix: str = "p", **tags: object) -> list[DicomMetadata]:
    """One image each of `count` distinct patients sharing `tags`."""
    return [DicomMetadata(patient_id=f"{prefix}{i}", **tags) for i in range(count)]  # type: ignore[arg-type]


def labelled(n: int, seed: int = 0, separation: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    scores = np.clip(rng.random(n) * 0.7 + separation * labels, 0, 1)
    return labels, scores


# ---------------------------------------------------------------- evaluate_cell


def test_cell_holds_the_documented_keys_as_plain_json_values() -> None:
    labels, scores = labelled(40)
    cell = evaluate_cell(labels, scores, patients=40, **SETTINGS)
    assert set(cell) == CELL_KEYS
    assert type(cell["n"]) is int and cell["n"] == 40
    assert cell["prevalence"] == 0.5
    assert cell["auroc"] == pytest.approx(roc_auc(labels, scores))
    assert isinstance(cell["auroc_ci"], list) and len(cell["auroc_ci"]) == 2
    assert cell["auroc_ci"][0] <= cell["auroc"] <= cell["auroc_ci"][1]
    for key in CELL_KEYS - {"n", "auroc_ci"}:
        assert type(cell[key]) is float, key
    assert json.loads(json.dumps(cell)) == cell


@pytest.mark.parametrize("count, suppressed", [(9, True), (10, False), (11, False), (0, True)])
def test_cell_is_suppressed_below_min_cell_size(count: int, suppressed: bool) -> None:
    labels, scores = labelled(count)
    cell = evaluate_cell(labels, scores, patients=count, **SETTINGS)
    assert (cell == {"suppressed": True}) is suppressed


def test_one_class_cell_has_no_auroc() -> None:
    cell = evaluate_cell(np.zeros(12), np.linspace(0, 1, 12), patients=12, **SETTINGS)
    assert cell["auroc"] is None and cell["auroc_ci"] is None
    assert cell["sensitivity"] is None and cell["specificity"] == 0.5 and cell["prevalence"] == 0.0


# ---------------------------------------------------------------- evaluate_subgroups


def test_result_shape() -> None:
    metadata = patients(12, prefix="f", sex="F", age_years=45.0, manufacturer="Acme") + patients(
        12, prefix="m", sex="M", age_years=70.0, manufacturer="Beta"
    )
    labels, scores = labelled(24)
    result = evaluate_subgroups(labels, scores, metadata, **SETTINGS)
    assert set(result) == {"overall", "attributes"}
    assert set(result["overall"]) == CELL_KEYS and result["overall"]["n"] == 24
    assert tuple(result["attributes"]) == ATTRIBUTES == ("sex", "age_band", "manufacturer")
    for summary in result["attributes"].values():
        assert set(summary) == {"groups", "worst_group", "largest_gap", "equalized_odds_difference"}
    assert list(result["attributes"]["sex"]["groups"]) == ["F", "M"]
    assert list(result["attributes"]["age_band"]["groups"]) == ["40-59", "60-79"]
    assert list(result["attributes"]["manufacturer"]["groups"]) == ["Acme", "Beta"]
    json.dumps(result)


def test_group_names_and_order() -> None:
    metadata = (
        patients(10, prefix="a", sex=None, age_years=None, manufacturer=None)
        + patients(10, prefix="b", sex="O", age_years=85.0, manufacturer="Zeta")
        + patients(10, prefix="c", sex="M", age_years=30.0, manufacturer="Acme")
        + patients(10, prefix="d", sex="F", age_years=60.0, manufacturer="Acme")
    )
    labels, scores = labelled(40)
    attributes = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]
    assert list(attributes["sex"]["groups"]) == ["F", "M", "O", "unknown"]
    assert list(attributes["age_band"]["groups"]) == ["<40", "60-79", "80+", "unknown"]
    assert list(attributes["manufacturer"]["groups"]) == ["Acme", "Zeta", "unknown"]
    assert attributes["manufacturer"]["groups"]["Acme"]["n"] == 20


def test_nine_patients_are_suppressed_and_still_listed() -> None:
    metadata = patients(9, prefix="f", sex="F") + patients(12, prefix="m", sex="M") + patients(30, prefix="o", sex="O")
    labels, scores = labelled(51)
    groups = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["sex"]["groups"]
    assert groups["F"] == {"suppressed": True}
    assert groups["M"] == {"suppressed": True}  # else F = overall - M - O, by subtraction
    assert set(groups["O"]) == CELL_KEYS and groups["O"]["n"] == 30


def test_suppressed_groups_together_reach_k_or_all_are_suppressed() -> None:
    metadata = patients(4, prefix="f", sex="F") + patients(7, prefix="m", sex="M") + patients(20, prefix="o", sex="O")
    labels, scores = labelled(31)
    groups = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["sex"]["groups"]
    assert groups["F"] == groups["M"] == {"suppressed": True}  # 4 + 7 >= 10: O can be released
    assert groups["O"]["n"] == 20
    metadata = patients(3, prefix="f", sex="F") + patients(40, prefix="m", sex="M")
    labels, scores = labelled(43)
    result = evaluate_subgroups(labels, scores, metadata, **SETTINGS)
    assert result["attributes"]["sex"]["groups"] == {"F": {"suppressed": True}, "M": {"suppressed": True}}
    assert result["overall"]["n"] == 43  # the whole site is still large enough


def test_suppression_counts_patients_not_images() -> None:
    metadata = [DicomMetadata(sex="F", patient_id=f"f{i % 5}") for i in range(12)] + patients(10, prefix="m", sex="M")
    labels, scores = labelled(22)
    result = evaluate_subgroups(labels, scores, metadata, **SETTINGS)
    assert result["attributes"]["sex"]["groups"]["F"] == {"suppressed": True}  # 12 images, 5 patients
    assert result["overall"]["n"] == 22  # 15 patients overall


def test_images_without_patient_id_count_as_one_patient_each() -> None:
    metadata = [DicomMetadata(sex="F")] * 10 + [DicomMetadata(sex="M", patient_id="same")] * 10
    metadata += [DicomMetadata(sex="O", patient_id=f"o{i}") for i in range(10)]
    labels, scores = labelled(30)
    groups = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["sex"]["groups"]
    assert groups["M"] == {"suppressed": True}  # 10 images of one patient
    assert sum(g == {"suppressed": True} for g in groups.values()) == 2  # and F or O with it
    assert [g["n"] for g in groups.values() if "n" in g] == [10]


def test_summaries_ignore_suppressed_groups() -> None:
    rng = np.random.default_rng(1)
    metadata = patients(40, prefix="a", manufacturer="Acme") + patients(40, prefix="b", manufacturer="Beta")
    metadata += patients(5, prefix="c", manufacturer="Cora") + patients(6, prefix="d", manufacturer="Dyna")
    labels = np.r_[np.arange(80) % 2, [1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0]]
    scores = np.r_[rng.random(40) * 0.6 + 0.4 * labels[:40], rng.random(40) * 0.8 + 0.2 * labels[40:80]]
    scores = np.r_[scores, [0.0, 0.0, 1.0, 1.0, 1.0], rng.random(6)]  # Cora is hopeless but too small to release
    summary = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["manufacturer"]
    groups = summary["groups"]
    assert groups["Cora"] == groups["Dyna"] == {"suppressed": True}
    assert summary["worst_group"] == "Beta"
    assert summary["largest_gap"] == pytest.approx(groups["Acme"]["auroc"] - groups["Beta"]["auroc"])
    tpr = [groups[g]["sensitivity"] for g in ("Acme", "Beta")]
    fpr = [1 - groups[g]["specificity"] for g in ("Acme", "Beta")]
    expected = max(abs(tpr[0] - tpr[1]), abs(fpr[0] - fpr[1]))
    assert summary["equalized_odds_difference"] == pytest.approx(expected)


def test_summaries_are_none_with_fewer_than_two_released_groups() -> None:
    metadata = patients(20, prefix="f", sex="F") + patients(3, prefix="m", sex="M")
    labels, scores = labelled(23)
    summary = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["sex"]
    assert summary["worst_group"] is None
    assert summary["largest_gap"] is None
    assert summary["equalized_odds_difference"] is None


def test_worst_group_needs_an_auroc() -> None:
    metadata = patients(10, prefix="a", sex="F") + patients(10, prefix="b", sex="M") + patients(10, prefix="c", sex="O")
    labels = np.r_[np.arange(20) % 2, np.zeros(10)]  # group O holds negatives only
    _, scores = labelled(30)
    summary = evaluate_subgroups(labels, scores, metadata, **SETTINGS)["attributes"]["sex"]
    assert summary["groups"]["O"]["auroc"] is None
    assert summary["worst_group"] in ("F", "M")
    assert summary["equalized_odds_difference"] is not None  # O has no sensitivity: skipped


def test_small_overall_cell_is_suppressed() -> None:
    labels, scores = labelled(6)
    result = evaluate_subgroups(labels, scores, patients(6, sex="F"), **SETTINGS)
    assert result["overall"] == {"suppressed": True}
    assert result["attributes"]["sex"]["groups"] == {"F": {"suppressed": True}}


def test_misaligned_inputs_raise() -> None:
    labels, scores = labelled(5)
    with pytest.raises(ValueError, match="must be aligned, got 5, 5 and 4"):
        evaluate_subgroups(labels, scores, patients(4), **SETTINGS)


def test_is_reproducible_with_the_seed() -> None:
    metadata = patients(30, sex="F")
    labels, scores = labelled(30)
    first = evaluate_subgroups(labels, scores, metadata, **SETTINGS, seed=2)
    assert evaluate_subgroups(labels, scores, metadata, **SETTINGS, seed=2) == first


@pytest.mark.parametrize("value, expected", [("P-0001", "P-0001"), ("  P7 ", "P7"), ("", None), (None, None)])
def test_patient_id_is_read_from_dicom(value: str | None, expected: str | None) -> None:
    ds = Dataset()
    if value is not None:
        ds.PatientID = value
    assert read_dicom_metadata(ds).patient_id == expected
