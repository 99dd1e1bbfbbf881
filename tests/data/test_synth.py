"""Tests for fedmed.data.synth: real, deterministic DICOM hospitals that differ like scanners do."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from fedmed.data.dicom import read_dicom_image
from fedmed.data.synth import BIASED_SITE, SITE_PROFILES, synthesize_hospitals
from fedmed.errors import DataError, FedmedError

N_IMAGES = 60
SIZE = 32


def read_rows(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("hospitals")
    return synthesize_hospitals(out, n_sites=3, images_per_site=N_IMAGES, image_size=SIZE, seed=7)


def test_site_folders_and_manifest(sites: list[Path]) -> None:
    assert [s.name for s in sites] == ["site-a", "site-b", "site-c"]
    for site in sites:
        rows = read_rows(site)
        assert list(rows[0]) == ["file", "label", "split"]
        assert len(rows) == N_IMAGES
        assert {r["label"] for r in rows} == {"0", "1"}
        assert {r["split"] for r in rows} == {"train", "test"}
        assert all((site / r["file"]).is_file() and r["file"].startswith("images/") for r in rows)
        test_share = sum(r["split"] == "test" for r in rows) / N_IMAGES
        assert 0.2 <= test_share <= 0.3
        # stratified: both classes in both splits
        assert {(r["label"], r["split"]) for r in rows} == {
            ("0", "train"), ("1", "train"), ("0", "test"), ("1", "test")
        }


def test_same_seed_gives_identical_bytes(sites: list[Path], tmp_path: Path) -> None:
    again = synthesize_hospitals(
        tmp_path, n_sites=3, images_per_site=N_IMAGES, image_size=SIZE, seed=7
    )
    for first, second in zip(sites, again, strict=True):
        assert (first / "labels.csv").read_bytes() == (second / "labels.csv").read_bytes()
        for row in read_rows(first)[:5]:
            assert (first / row["file"]).read_bytes() == (second / row["file"]).read_bytes()


def test_other_seed_gives_other_data(sites: list[Path], tmp_path: Path) -> None:
    other = synthesize_hospitals(
        tmp_path, n_sites=1, images_per_site=N_IMAGES, image_size=SIZE, seed=8
    )
    assert (other[0] / "labels.csv").read_bytes() != (sites[0] / "labels.csv").read_bytes()


def test_prevalence_differs_across_sites(sites: list[Path]) -> None:
    prevalence = [np.mean([int(r["label"]) for r in read_rows(s)]) for s in sites]
    expected = [p.prevalence for p in SITE_PROFILES[:3]]
    np.testing.assert_allclose(prevalence, expected, atol=1 / N_IMAGES)
    assert len(set(prevalence)) == 3


def test_tags_are_present_and_site_specific(sites: list[Path]) -> None:
    first = [dcmread(s / read_rows(s)[0]["file"]) for s in sites]
    assert len({ds.Manufacturer for ds in first}) == 3
    assert len({ds.ManufacturerModelName for ds in first}) == 3
    assert len({ds.Rows for ds in first}) == 3
    for site, ds in zip(sites, first, strict=True):
        assert ds.SOPInstanceUID.is_valid and ds.StudyInstanceUID.is_valid
        assert ds.PatientSex in ("M", "F")
        assert len(ds.PatientAge) == 4 and ds.PatientAge.endswith("Y")
        assert ds.PatientID.startswith(site.name.upper() + "-")
        assert ds.PixelSpacing and ds.file_meta.TransferSyntaxUID.is_little_endian
        assert ds.preamble is not None
    assert first[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert "WindowCenter" in first[0] and "WindowCenter" not in first[1]
    assert first[1].PhotometricInterpretation == "MONOCHROME1"
    ct = first[2]
    assert ct.Modality == "CT" and ct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ct.RescaleIntercept == -1024 and ct.WindowCenter[0] == 40


def test_sexes_both_present(sites: list[Path]) -> None:
    site = sites[0]
    sexes = {dcmread(site / r["file"], stop_before_pixels=True).PatientSex for r in read_rows(site)}
    assert sexes == {"M", "F"}


def test_pixel_statistics_differ_across_sites(sites: list[Path]) -> None:
    stats = []
    for site in sites:
        arrays = [dcmread(site / r["file"]).pixel_array for r in read_rows(site)[:10]]
        stats.append((np.mean([a.mean() for a in arrays]), np.mean([a.std() for a in arrays])))
    means = [m for m, _ in stats]
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) > 100
    assert len({round(s, 0) for _, s in stats}) == 3


def test_lesions_are_bright_and_fainter_in_biased_subgroup(tmp_path: Path) -> None:
    """Label 1 carries a bright blob; at site-b women's blobs are fainter (the planted bias)."""
    site_a, site_b = synthesize_hospitals(
        tmp_path, n_sites=2, images_per_site=120, image_size=SIZE, seed=3
    )
    assert site_b.name == BIASED_SITE

    def peak(site: Path, label: str, sex: str | None = None) -> float:
        values = []
        for row in read_rows(site):
            if row["label"] != label:
                continue
            if sex and dcmread(site / row["file"], stop_before_pixels=True).PatientSex != sex:
                continue
            image = read_dicom_image(site / row["file"], size=SIZE)
            values.append(image.max() - np.median(image))
        return float(np.mean(values))

    assert peak(site_a, "1") > peak(site_a, "0") + 0.1
    female, male = peak(site_b, "1", "F"), peak(site_b, "1", "M")
    assert female < male - 0.05


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    synthesize_hospitals(tmp_path, n_sites=1, images_per_site=8, image_size=16)
    with pytest.raises(DataError, match="site-a already has files.*overwrite=True"):
        synthesize_hospitals(tmp_path, n_sites=1, images_per_site=8, image_size=16)
    (site,) = synthesize_hospitals(
        tmp_path, n_sites=1, images_per_site=6, image_size=16, overwrite=True
    )
    assert len(list((site / "images").glob("*.dcm"))) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_sites": 0}, "n_sites"),
        ({"n_sites": 27}, "n_sites"),
        ({"images_per_site": 2}, "images_per_site"),
        ({"image_size": 8}, "image_size"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(FedmedError, match=message):
        synthesize_hospitals(tmp_path, **kwargs)
