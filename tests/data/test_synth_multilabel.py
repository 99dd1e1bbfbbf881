"""Tests for fedmed.data.synth_multilabel: valid DICOM, multi-label and multi-class manifests, signs, the bias."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from fedmed.config.schema import SYNTHESIS_TASKS, SynthesisConfig, TaskKind
from fedmed.data.demo import KINDS, synthesize_demo
from fedmed.data.dicom import read_dicom_image
from fedmed.data.synth import BIASED_SITE, SITE_PROFILES, synthesize_hospitals
from fedmed.data.synth_multilabel import (
    CLASS_SHARES,
    CLASSES,
    FINDING_PREVALENCE,
    FINDINGS,
    synthesize_multiclass_hospitals,
    synthesize_multilabel_hospitals,
)
from fedmed.errors import DataError, FedmedError

N_IMAGES = 160
SIZE = 48


def read_rows(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("multilabel")
    return synthesize_multilabel_hospitals(out, n_sites=3, images_per_site=N_IMAGES, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def pixels(sites: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray, list[dict[str, str]]]]:
    """Per site: images as the model reads them (N, SIZE, SIZE), PatientSex, manifest rows."""
    read = {}
    for site in sites[:2]:
        rows = read_rows(site)
        images = np.stack([read_dicom_image(site / r["file"], size=SIZE)[0] for r in rows])
        sexes = np.array([dcmread(site / r["file"], stop_before_pixels=True).PatientSex for r in rows])
        read[site.name] = (images, sexes, rows)
    return read


def test_manifest_columns_values_and_splits(sites: list[Path]) -> None:
    assert [s.name for s in sites] == ["site-a", "site-b", "site-c"]
    for site in sites:
        rows = read_rows(site)
        assert list(rows[0]) == ["file", "split", *FINDINGS]
        assert len(rows) == N_IMAGES
        assert all((site / r["file"]).is_file() and r["file"].startswith("images/") for r in rows)
        assert 0.2 <= sum(r["split"] == "test" for r in rows) / N_IMAGES <= 0.3
        for finding in FINDINGS:
            assert {r[finding] for r in rows} == {"0", "1"}
            assert {(r[finding], r["split"]) for r in rows} == {
                ("0", "train"), ("1", "train"), ("0", "test"), ("1", "test")
            }, (site.name, finding)


def test_files_are_valid_dicom_with_site_scanners(sites: list[Path]) -> None:
    for site, profile in zip(sites, SITE_PROFILES, strict=False):
        for row in read_rows(site)[:5]:
            ds = dcmread(site / row["file"])
            assert ds.SOPInstanceUID.is_valid and ds.StudyInstanceUID.is_valid
            assert row["file"] == f"images/{ds.SOPInstanceUID}.dcm"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert (ds.Manufacturer, ds.PhotometricInterpretation) == (profile.manufacturer, profile.photometric)
            assert ds.PatientSex in ("M", "F") and ds.PatientIdentityRemoved == "YES"
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
            image = read_dicom_image(site / row["file"], size=SIZE)
            assert image.shape == (1, SIZE, SIZE) and image.min() >= 0.0 and image.max() <= 1.0


def test_uids_differ_from_the_binary_synthesizer(sites: list[Path], tmp_path: Path) -> None:
    (binary,) = synthesize_hospitals(tmp_path, n_sites=1, images_per_site=8, image_size=16, seed=3)
    binary_uids = {Path(r["file"]).stem for r in read_rows(binary)}
    assert not binary_uids & {Path(r["file"]).stem for r in read_rows(sites[0])}


def test_prevalences_per_site_and_findings_independent(sites: list[Path]) -> None:
    for site, prevalence in zip(sites, FINDING_PREVALENCE, strict=False):
        labels = np.array([[int(r[f]) for f in FINDINGS] for r in read_rows(site)])
        np.testing.assert_allclose(labels.mean(axis=0), [prevalence[f] for f in FINDINGS], atol=1 / N_IMAGES)
        correlation = np.corrcoef(labels.T)[np.triu_indices(len(FINDINGS), 1)]
        assert np.abs(correlation).max() < 0.3
    per_site = [tuple(p[f] for f in FINDINGS) for p in FINDING_PREVALENCE[:3]]
    assert len(set(per_site)) == 3


def lung_bands(image: np.ndarray, rows: tuple[float, float], columns: tuple[float, float]) -> np.ndarray:
    """Pixels in ``rows`` (fractions of the height) of both lungs' column bands (fractions from the edge)."""
    top, bottom = (int(f * SIZE) for f in rows)
    inner, outer = (int(f * SIZE) for f in columns)
    region = image[top:bottom]
    return np.concatenate([region[:, inner:outer].ravel(), region[:, SIZE - outer : SIZE - inner].ravel()])


def nodule_sign(image: np.ndarray) -> float:
    """A bright blob in a lung's upper or middle zone: the brightest lung pixel above the median."""
    band = lung_bands(image, (0.15, 0.5), (0.26, 0.4))
    return float(band.max() - np.median(band))


def effusion_sign(image: np.ndarray) -> float:
    """Fluid at the lateral lung bases."""
    return float(lung_bands(image, (0.74, 0.9), (0.2, 0.34)).mean())


def cardiomegaly_sign(image: np.ndarray) -> float:
    """An enlarged heart brightens the lungs' medial parts beside it."""
    return float(lung_bands(image, (0.55, 0.7), (0.33, 0.42)).mean())


SIGNS = {"nodule": nodule_sign, "effusion": effusion_sign, "cardiomegaly": cardiomegaly_sign}


def sign_effect(images: np.ndarray, rows: list[dict[str, str]], finding: str, among: np.ndarray) -> float:
    """Mean sign of positives minus negatives, over the cases in ``among``."""
    sign = np.array([SIGNS[finding](image) for image in images])
    positive = np.array([r[finding] == "1" for r in rows])
    return float(sign[positive & among].mean() - sign[~positive & among].mean())


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_has_its_visual_sign(pixels, finding: str) -> None:  # noqa: ANN001
    images, _, rows = pixels["site-a"]
    assert sign_effect(images, rows, finding, np.ones(len(rows), dtype=bool)) > 0.04


def test_effusion_is_fainter_for_women_at_the_biased_site_only(pixels) -> None:  # noqa: ANN001
    assert BIASED_SITE == "site-b"
    effects = {}
    for name, (images, sexes, rows) in pixels.items():
        effects[name] = {sex: sign_effect(images, rows, "effusion", sexes == sex) for sex in ("F", "M")}
    biased, unbiased = effects["site-b"], effects["site-a"]
    assert biased["F"] < 0.5 * biased["M"] and biased["M"] - biased["F"] > 0.03
    assert unbiased["F"] > 0.7 * unbiased["M"]


def test_labels_choose_findings_and_column_order(tmp_path: Path) -> None:
    (site,) = synthesize_multilabel_hospitals(
        tmp_path, n_sites=1, images_per_site=24, image_size=16, labels=("cardiomegaly", "nodule")
    )
    rows = read_rows(site)
    assert list(rows[0]) == ["file", "split", "cardiomegaly", "nodule"]
    assert {r["cardiomegaly"] for r in rows} == {"0", "1"}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = synthesize_multilabel_hospitals(tmp_path / "a", n_sites=2, images_per_site=16, image_size=16, seed=5)
    second = synthesize_multilabel_hospitals(tmp_path / "b", n_sites=2, images_per_site=16, image_size=16, seed=5)
    for one, two in zip(first, second, strict=True):
        assert (one / "labels.csv").read_bytes() == (two / "labels.csv").read_bytes()
        for row in read_rows(one)[:4]:
            assert (one / row["file"]).read_bytes() == (two / row["file"]).read_bytes()
    other = synthesize_multilabel_hospitals(tmp_path / "c", n_sites=1, images_per_site=16, image_size=16, seed=6)
    assert (other[0] / "labels.csv").read_bytes() != (first[0] / "labels.csv").read_bytes()


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    synthesize_multilabel_hospitals(tmp_path, n_sites=1, images_per_site=12, image_size=16)
    with pytest.raises(DataError, match="site-a already has files.*overwrite=True"):
        synthesize_multilabel_hospitals(tmp_path, n_sites=1, images_per_site=12, image_size=16)
    (site,) = synthesize_multilabel_hospitals(tmp_path, n_sites=1, images_per_site=14, image_size=16, overwrite=True)
    assert len(list((site / "images").glob("*.dcm"))) == 14


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": ("nodule", "efusion")}, r"unknown finding 'efusion' \(did you mean 'effusion'\?\); findings with"),
        ({"labels": ("nodule", "nodule")}, "must name each finding once"),
        ({"labels": ()}, "must name each finding once, at least one"),
        ({"labels": "nodule"}, r"not the string 'nodule'; e.g. \('nodule',\)"),
        ({"images_per_site": 11}, r"images_per_site must be at least 12 .* of each of 3 labels"),
        ({"n_sites": 0}, "n_sites"),
        ({"image_size": 8}, "image_size must be at least 16"),
        ({"test_fraction": 0.0}, "test_fraction"),
    ],
    ids=["unknown-label", "duplicate", "empty", "string", "too-few-images", "n-sites", "size", "fraction"],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(FedmedError, match=message):
        synthesize_multilabel_hospitals(tmp_path, **{"images_per_site": 12, "image_size": 16, **kwargs})
    assert not list(tmp_path.iterdir())  # refused before writing anything


# --- multi-class ---------------------------------------------------------------------------

N_CLASS_IMAGES = 120  # every site's shares times this are whole numbers


@pytest.fixture(scope="module")
def class_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("multiclass")
    return synthesize_multiclass_hospitals(out, n_sites=3, images_per_site=N_CLASS_IMAGES, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def class_pixels(class_sites: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray, list[dict[str, str]]]]:
    """Per site (a and b): images as the model reads them, PatientSex, manifest rows."""
    read = {}
    for site in class_sites[:2]:
        rows = read_rows(site)
        images = np.stack([read_dicom_image(site / r["file"], size=SIZE)[0] for r in rows])
        sexes = np.array([dcmread(site / r["file"], stop_before_pixels=True).PatientSex for r in rows])
        read[site.name] = (images, sexes, rows)
    return read


def test_multiclass_manifest_has_one_class_per_row(class_sites: list[Path]) -> None:
    assert [s.name for s in class_sites] == ["site-a", "site-b", "site-c"]
    for site in class_sites:
        rows = read_rows(site)
        assert list(rows[0]) == ["file", "split", "label"]
        assert len(rows) == N_CLASS_IMAGES
        assert {r["label"] for r in rows} == set(CLASSES)
        assert all((site / r["file"]).is_file() and r["file"].startswith("images/") for r in rows)


def test_multiclass_counts_are_exact_per_site(class_sites: list[Path]) -> None:
    for site, shares in zip(class_sites, CLASS_SHARES, strict=False):
        counts = Counter(r["label"] for r in read_rows(site))
        assert counts == {name: round(shares[name] * N_CLASS_IMAGES) for name in CLASSES}, site.name
    assert len({tuple(shares[c] for c in CLASSES) for shares in CLASS_SHARES[:3]}) == 3


def test_multiclass_test_split_is_stratified_with_every_class_in_both(class_sites: list[Path]) -> None:
    for site in class_sites:
        rows = read_rows(site)
        for name in CLASSES:
            members = [r for r in rows if r["label"] == name]
            assert sum(r["split"] == "test" for r in members) == round(0.25 * len(members)), (site.name, name)
        assert {(r["label"], r["split"]) for r in rows} == {(c, s) for c in CLASSES for s in ("train", "test")}


def test_multiclass_tiny_site_keeps_every_class_in_both_splits(tmp_path: Path) -> None:
    (site,) = synthesize_multiclass_hospitals(tmp_path, n_sites=1, images_per_site=9, image_size=16)
    rows = read_rows(site)
    assert sorted(Counter(r["label"] for r in rows).values()) == [2, 2, 2, 3]  # rounding leaves none below 2
    assert {(r["label"], r["split"]) for r in rows} == {(c, s) for c in CLASSES for s in ("train", "test")}


def test_multiclass_files_read_back_as_dicom(class_sites: list[Path], sites: list[Path]) -> None:
    for site, profile in zip(class_sites, SITE_PROFILES, strict=False):
        for row in read_rows(site)[:5]:
            ds = dcmread(site / row["file"])
            assert ds.SOPInstanceUID.is_valid and row["file"] == f"images/{ds.SOPInstanceUID}.dcm"
            assert (ds.Manufacturer, ds.PhotometricInterpretation) == (profile.manufacturer, profile.photometric)
            assert ds.PatientSex in ("M", "F") and ds.PatientIdentityRemoved == "YES"
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
            assert read_dicom_image(site / row["file"], size=SIZE).shape == (1, SIZE, SIZE)
    multilabel_uids = {Path(r["file"]).stem for site in sites for r in read_rows(site)}  # same seed, sizes
    assert not multilabel_uids & {Path(r["file"]).stem for site in class_sites for r in read_rows(site)}


def effusion_side_sign(image: np.ndarray) -> float:
    """Fluid at the lateral base of the wetter lung (an effusion may fill one side only)."""
    top, bottom = int(0.74 * SIZE), int(0.9 * SIZE)
    inner, outer = int(0.2 * SIZE), int(0.34 * SIZE)
    region = image[top:bottom]
    return float(max(region[:, inner:outer].mean(), region[:, SIZE - outer : SIZE - inner].mean()))


CLASS_SIGNS = {**SIGNS, "effusion": effusion_side_sign}


def class_effect(images: np.ndarray, rows: list[dict[str, str]], finding: str, among: np.ndarray) -> float:
    """Mean sign of ``finding`` in its class minus in ``normal``, over the cases in ``among``."""
    sign = np.array([CLASS_SIGNS[finding](image) for image in images])
    labels = np.array([r["label"] for r in rows])
    return float(sign[(labels == finding) & among].mean() - sign[(labels == "normal") & among].mean())


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_class_shows_its_finding(class_pixels, finding: str) -> None:  # noqa: ANN001
    images, _, rows = class_pixels["site-a"]
    assert class_effect(images, rows, finding, np.ones(len(rows), dtype=bool)) > 0.04


def test_multiclass_effusion_is_fainter_for_women_at_the_biased_site(class_pixels) -> None:  # noqa: ANN001
    effects = {
        name: {sex: class_effect(images, rows, "effusion", sexes == sex) for sex in ("F", "M")}
        for name, (images, sexes, rows) in class_pixels.items()
    }
    biased, unbiased = effects[BIASED_SITE], effects["site-a"]
    assert biased["F"] < 0.5 * biased["M"] and biased["M"] - biased["F"] > 0.03
    assert unbiased["F"] > 0.6 * unbiased["M"]


def test_classes_choose_which_are_drawn(tmp_path: Path) -> None:
    (site,) = synthesize_multiclass_hospitals(
        tmp_path, n_sites=1, images_per_site=20, image_size=16, classes=("effusion", "normal")
    )
    assert Counter(r["label"] for r in read_rows(site)) == {"normal": 12, "effusion": 8}  # 0.40 : 0.25


def test_multiclass_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = synthesize_multiclass_hospitals(tmp_path / "a", n_sites=2, images_per_site=16, image_size=16, seed=5)
    second = synthesize_multiclass_hospitals(tmp_path / "b", n_sites=2, images_per_site=16, image_size=16, seed=5)
    for one, two in zip(first, second, strict=True):
        assert (one / "labels.csv").read_bytes() == (two / "labels.csv").read_bytes()
        for row in read_rows(one)[:4]:
            assert (one / row["file"]).read_bytes() == (two / row["file"]).read_bytes()
    other = synthesize_multiclass_hospitals(tmp_path / "c", n_sites=1, images_per_site=16, image_size=16, seed=6)
    assert (other[0] / "labels.csv").read_bytes() != (first[0] / "labels.csv").read_bytes()


def test_multiclass_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    synthesize_multiclass_hospitals(tmp_path, n_sites=1, images_per_site=12, image_size=16)
    with pytest.raises(DataError, match="site-a already has files.*overwrite=True"):
        synthesize_multiclass_hospitals(tmp_path, n_sites=1, images_per_site=12, image_size=16)
    (site,) = synthesize_multiclass_hospitals(tmp_path, n_sites=1, images_per_site=14, image_size=16, overwrite=True)
    assert len(list((site / "images").glob("*.dcm"))) == 14


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": ("normal", "efusion")}, r"unknown class 'efusion' \(did you mean 'effusion'\?\); classes the"),
        ({"classes": ("normal", "fracture")}, r"unknown class 'fracture'; classes the synthesizer draws: normal, nod"),
        ({"classes": ("normal", "nodule", "normal")}, "must name each class once; repeated: normal"),
        ({"classes": ("normal",)}, "at least 2 classes"),
        ({"classes": ()}, "at least 2 classes"),
        ({"classes": "normal"}, r"not the string 'normal'"),
        ({"images_per_site": 7}, r"images_per_site must be at least 8 .* each of 4 classes"),
        ({"n_sites": 0}, "n_sites"),
        ({"image_size": 8}, "image_size must be at least 16"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
    ids=["misspelt", "unknown", "duplicate", "one", "empty", "string", "too-few-images", "n-sites", "size", "fraction"],
)
def test_multiclass_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(FedmedError, match=message):
        synthesize_multiclass_hospitals(tmp_path, **{"images_per_site": 12, "image_size": 16, **kwargs})
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_demo_kind_multiclass_writes_the_task_classes(tmp_path: Path) -> None:
    assert "multiclass" in KINDS and SYNTHESIS_TASKS["multiclass"] is TaskKind.MULTICLASS
    settings = SynthesisConfig(kind="multiclass", images_per_site=20, stored_size=32, seed=1)
    sites = synthesize_demo(tmp_path, settings, n_sites=2, names=("normal", "cardiomegaly"))
    assert [s.name for s in sites] == ["site-a", "site-b"]
    assert {r["label"] for r in read_rows(sites[1])} == {"normal", "cardiomegaly"}
