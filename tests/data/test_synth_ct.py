"""Tests for fedmed.data.synth_ct: CT hospitals as a PACS exports them, one file per slice."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from fedmed.data import synth_ct
from fedmed.data.synth_ct import CT_SITE_PROFILES, FEMALE_NODULE_SCALE, synthesize_ct_hospitals
from fedmed.errors import DataError, FedmedError

SLICES = 6


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_ct_hospitals(
        tmp_path_factory.mktemp("ct"), studies_per_site=8, slices=SLICES, image_size=24, seed=3
    )


def rows(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def study(site: Path, index: int) -> list:
    return [dcmread(path) for path in sorted((site / "studies" / f"{index:04d}").glob("*.dcm"))]


def test_every_study_is_a_series_of_single_slice_files(sites: list[Path]) -> None:
    for site, profile in zip(sites, CT_SITE_PROFILES, strict=True):
        for index in range(8):
            slices = study(site, index)
            assert len(slices) == SLICES
            assert {ds.SOPClassUID for ds in slices} == {"1.2.840.10008.5.1.4.1.1.2"}
            assert len({ds.SeriesInstanceUID for ds in slices}) == 1
            assert len({ds.SOPInstanceUID for ds in slices}) == SLICES
            assert {ds.Manufacturer for ds in slices} == {profile.manufacturer}
            z = sorted(float(ds.ImagePositionPatient[2]) for ds in slices)
            np.testing.assert_allclose(np.diff(z), profile.slice_spacing_mm)


def test_only_the_positions_order_the_slices(sites: list[Path]) -> None:
    """File names (UIDs) are in no useful order, and site-b numbers instances against the positions."""
    name_order_matches = []
    for site in sites:
        slices = study(site, 0)  # sorted by file name
        z = [float(ds.ImagePositionPatient[2]) for ds in slices]
        name_order_matches.append(z == sorted(z) or z == sorted(z, reverse=True))
        by_number = sorted(slices, key=lambda ds: int(ds.InstanceNumber))
        z_by_number = [float(ds.ImagePositionPatient[2]) for ds in by_number]
        ascending = z_by_number == sorted(z_by_number)
        assert ascending == (site.name == "site-b")  # cranial-first numbering except at site-b
    assert not all(name_order_matches)


def test_manifests_name_series_by_folder_or_uid(sites: list[Path]) -> None:
    site_a, _, site_c = sites
    assert all((site_a / row["file"]).is_dir() for row in rows(site_a))
    uids = {study(site_c, i)[0].SeriesInstanceUID for i in range(8)}
    assert {row["file"] for row in rows(site_c)} == uids
    for site in sites:
        labels = [row["label"] for row in rows(site)]
        assert set(labels) == {"0", "1"} and {row["split"] for row in rows(site)} == {"train", "test"}


def nodule_of(scale: float) -> np.ndarray:
    """What a nodule adds to a study: the same draw with and without one, noise off."""
    profile = dataclasses.replace(CT_SITE_PROFILES[0], noise_hu=0.0)
    volumes = [
        synth_ct._draw_volume(np.random.default_rng(7), profile, size=32, slices=12, nodule=nodule, scale=scale)
        for nodule in (False, True)
    ]
    return volumes[1] - volumes[0]


def test_a_positive_study_holds_one_nodule() -> None:
    added = nodule_of(1.0)
    assert added.min() >= -1e-3  # the nodule only adds density
    assert 0.9 * synth_ct._NODULE_HU < added.max() <= synth_ct._NODULE_HU + 1e-3
    core = added > added.max() / 2
    assert 1 < core.sum() < 0.05 * core.size  # one compact blob, not a wash


def test_the_planted_bias_makes_nodules_smaller_and_fainter() -> None:
    normal, faint = nodule_of(1.0), nodule_of(min(FEMALE_NODULE_SCALE))
    assert faint.max() < 0.75 * normal.max()
    assert faint.sum() < 0.5 * normal.sum()


def test_same_seed_same_files(tmp_path: Path, sites: list[Path]) -> None:
    again = synthesize_ct_hospitals(tmp_path, n_sites=1, studies_per_site=8, slices=SLICES, image_size=24, seed=3)
    assert (again[0] / "labels.csv").read_bytes() == (sites[0] / "labels.csv").read_bytes()
    first = sorted((sites[0] / "studies" / "0003").glob("*.dcm"))
    second = sorted((again[0] / "studies" / "0003").glob("*.dcm"))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_refuses_bad_arguments_and_a_used_folder(tmp_path: Path) -> None:
    with pytest.raises(FedmedError, match="slices must be between 2 and 512"):
        synthesize_ct_hospitals(tmp_path, slices=1)
    (tmp_path / "site-a").mkdir()
    (tmp_path / "site-a" / "scan.dcm").write_bytes(b"real data")
    with pytest.raises(DataError, match="already has files"):
        synthesize_ct_hospitals(tmp_path, n_sites=1, studies_per_site=4)
