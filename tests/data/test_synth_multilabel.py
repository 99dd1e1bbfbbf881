"""Tests for fedmed.data.synth_multilabel: valid DICOM, a multi-label manifest, finding signs, the planted bias."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from fedmed.data.dicom import read_dicom_image
from fedmed.data.synth import BIASED_SITE, SITE_PROFILES, synthesize_hospitals
from fedmed.data.synth_multilabel import FINDING_PREVALENCE, FINDINGS, synthesize_multilabel_hospitals
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
