"""Tests for fedmed.data.synth_seg: segmentation hospitals whose every SEG is valid, aligned, and biased at site-b."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from scipy import ndimage

from fedmed.data.dicom import read_dicom_image, read_dicom_metadata
from fedmed.data.masks import read_label_map_image, read_label_map_volume, read_mask_volume
from fedmed.data.series import group_series, read_volume
from fedmed.data.synth_seg import (
    NIFTI_SITE,
    SegmentationSite,
    synthesize_ct_segmentation_hospitals,
    synthesize_segmentation_hospitals,
)
from fedmed.errors import DataError, FedmedError

N_IMAGES = 24
SIZE = 24


def read_rows(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def contrast(image: np.ndarray, labels: np.ndarray, *, ring: int = 2) -> float:
    """Mean inside the lesion minus mean of a `ring`-pixel ring around it: positive only if the mask lies on it."""
    inside = labels > 0
    around = ndimage.binary_dilation(inside, iterations=ring) & ~inside
    return float(image[inside].mean() - image[around].mean())


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SegmentationSite]:
    return synthesize_segmentation_hospitals(
        tmp_path_factory.mktemp("seg"), n_sites=3, images_per_site=N_IMAGES, image_size=SIZE, seed=3
    )


@pytest.fixture(scope="module")
def read_back(sites: list[SegmentationSite]) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Per site, (sex, image at its own matrix, label map) for every row."""
    out = {}
    for site in sites:
        records = []
        for row in read_rows(site.site_dir):
            image_path = site.site_dir / row["file"]
            rows = int(dcmread(image_path, stop_before_pixels=True).Rows)
            image = read_dicom_image(image_path, size=rows)[0]
            labels = read_label_map_image(site.site_dir / row["mask"], image_path, structures=["lesion"])
            records.append((read_dicom_metadata(image_path).sex, image, labels))
        out[site.site_dir.name] = records
    return out


def test_manifest_and_files(sites: list[SegmentationSite]) -> None:
    assert [s.site_dir.name for s in sites] == ["site-a", "site-b", "site-c"]
    for site in sites:
        rows = read_rows(site.site_dir)
        assert list(rows[0]) == ["file", "mask", "split"] and len(rows) == N_IMAGES
        assert {r["split"] for r in rows} == {"train", "test"}
        assert 0.2 <= sum(r["split"] == "test" for r in rows) / N_IMAGES <= 0.3
        for row in rows:
            assert (site.site_dir / row["file"]).is_file() and (site.site_dir / row["mask"]).is_file()
        niftis = [r for r in rows if r["mask"].endswith(".nii.gz")]
        assert (len(niftis) == N_IMAGES // 10) if site.site_dir.name == NIFTI_SITE else not niftis


def test_sites_differ_like_scanners(sites: list[SegmentationSite]) -> None:
    first = [dcmread(s.site_dir / read_rows(s.site_dir)[0]["file"]) for s in sites]
    assert len({ds.Manufacturer for ds in first}) == 3
    assert len({int(ds.Rows) for ds in first}) == 3
    assert [ds.PhotometricInterpretation for ds in first] == ["MONOCHROME2", "MONOCHROME1", "MONOCHROME2"]


def test_every_seg_is_a_proper_segmentation(sites: list[SegmentationSite]) -> None:
    for site in sites:
        for row in read_rows(site.site_dir)[:6]:
            if not row["mask"].endswith(".dcm"):
                continue
            image, seg = dcmread(site.site_dir / row["file"]), dcmread(site.site_dir / row["mask"])
            assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
            assert [item.SegmentLabel for item in seg.SegmentSequence] == ["lesion"]
            assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
            assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
            assert seg.PatientSex == image.PatientSex and seg.PatientAge == image.PatientAge
            assert seg.StudyInstanceUID == image.StudyInstanceUID


def test_every_mask_lies_on_its_lesion(
    sites: list[SegmentationSite], read_back: dict[str, list[tuple[str, np.ndarray, np.ndarray]]]
) -> None:
    for site in sites:
        records = read_back[site.site_dir.name]
        for (_, image, labels), area in zip(records, site.lesion_areas, strict=True):
            assert labels.max() == 1 and int(labels.sum()) == area  # at least one lesion, the area reported
            assert contrast(image, labels) > 0.05
            shifted = np.roll(labels, labels.shape[1] // 3, axis=1)  # a misplaced mask would see background
            assert contrast(image, labels) > contrast(image, shifted)


def test_bias_at_site_b_only(
    sites: list[SegmentationSite], read_back: dict[str, list[tuple[str, np.ndarray, np.ndarray]]]
) -> None:
    def by_sex(site: str, values: list[float]) -> dict[str, float]:
        sexes = [sex for sex, _, _ in read_back[site]]
        return {s: float(np.mean([v for v, x in zip(values, sexes, strict=True) if x == s])) for s in "FM"}

    for site in sites:
        name = site.site_dir.name
        area = by_sex(name, [int(labels.sum()) for _, _, labels in read_back[name]])
        faint = by_sex(name, [contrast(image, labels) for _, image, labels in read_back[name]])
        if name == "site-b":
            assert area["F"] < 0.6 * area["M"]
            assert faint["F"] < 0.7 * faint["M"]
        else:
            assert 0.6 * area["M"] < area["F"] < area["M"] / 0.6


def test_same_seed_same_bytes(sites: list[SegmentationSite], tmp_path: Path) -> None:
    again = synthesize_segmentation_hospitals(tmp_path, n_sites=1, images_per_site=N_IMAGES, image_size=SIZE, seed=3)
    first = sites[0].site_dir
    assert (first / "labels.csv").read_bytes() == (again[0].site_dir / "labels.csv").read_bytes()
    row = read_rows(first)[0]
    for column in ("file", "mask"):
        assert (first / row[column]).read_bytes() == (again[0].site_dir / row[column]).read_bytes()


def test_several_structures(tmp_path: Path) -> None:
    site = synthesize_segmentation_hospitals(
        tmp_path, n_sites=1, images_per_site=6, image_size=SIZE, seed=1, structures=("liver", "tumour")
    )[0]
    values = set()
    for row in read_rows(site.site_dir):
        seg = dcmread(site.site_dir / row["mask"])
        assert {item.SegmentLabel for item in seg.SegmentSequence} <= {"liver", "tumour"}
        labels = read_label_map_image(site.site_dir / row["mask"], site.site_dir / row["file"],
                                      structures=["liver", "tumour"])
        values |= set(np.unique(labels).tolist())
    assert values == {0, 1, 2}


def test_refusals(sites: list[SegmentationSite], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="already has files"):
        synthesize_segmentation_hospitals(sites[0].site_dir.parent, n_sites=1, images_per_site=4, image_size=SIZE)
    for structures, match in (("lesion", "list of names"), (("a", "A"), "must differ"), ((), "1 to 8")):
        with pytest.raises(FedmedError, match=match):
            synthesize_segmentation_hospitals(tmp_path, n_sites=1, images_per_site=4, structures=structures)
    with pytest.raises(FedmedError, match="images_per_site"):
        synthesize_segmentation_hospitals(tmp_path, n_sites=1, images_per_site=2)


def test_overwrite_replaces_a_previous_synthesis(tmp_path: Path) -> None:
    synthesize_segmentation_hospitals(tmp_path, n_sites=1, images_per_site=8, image_size=SIZE, seed=0)
    site = synthesize_segmentation_hospitals(
        tmp_path, n_sites=1, images_per_site=5, image_size=SIZE, seed=1, overwrite=True
    )[0]
    assert len(list((site.site_dir / "images").glob("*.dcm"))) == 5
    assert len(list((site.site_dir / "masks").iterdir())) == 5


@pytest.fixture(scope="module")
def ct_sites(tmp_path_factory: pytest.TempPathFactory) -> list[SegmentationSite]:
    return synthesize_ct_segmentation_hospitals(
        tmp_path_factory.mktemp("ct-seg"), n_sites=3, studies_per_site=6, slices=6, image_size=24, seed=2
    )


class TestCt:
    def test_seg_references_every_slice_and_lies_on_the_lesion(self, ct_sites: list[SegmentationSite]) -> None:
        for site in ct_sites:
            rows = read_rows(site.site_dir)
            assert list(rows[0]) == ["file", "mask", "split"]
            for row, volume in zip(rows, site.lesion_areas, strict=True):
                series = group_series(sorted((site.site_dir / row["file"]).glob("*.dcm"))).series[0]
                seg = dcmread(site.site_dir / row["mask"])
                instances = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
                referenced = {item.ReferencedSOPInstanceUID for item in instances}
                assert len(referenced) == series.depth == 6
                labels = read_label_map_volume(site.site_dir / row["mask"], series, structures=["lesion"])
                assert int(labels.sum()) == volume > 0
                hu = read_volume(series).voxels
                assert contrast(hu, labels, ring=1) > 50.0  # HU, a nodule inside the lung
                assert contrast(hu, labels, ring=1) > contrast(hu, np.roll(labels, 8, axis=2), ring=1)
                resized = read_mask_volume(site.site_dir / row["mask"], series, structures=["lesion"],
                                           target_shape=(4, 16, 16))
                assert resized.shape == (4, 16, 16)

    def test_bias_at_site_b(self, tmp_path: Path) -> None:
        site = synthesize_ct_segmentation_hospitals(
            tmp_path, n_sites=2, studies_per_site=16, slices=6, image_size=16, seed=5
        )[1]
        volumes, sexes = np.array(site.lesion_areas), np.array(site.sexes)
        assert volumes[sexes == "F"].mean() < 0.6 * volumes[sexes == "M"].mean()
