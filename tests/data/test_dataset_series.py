"""Tests for fedmed.data.dataset with sample: series: manifests name series; bad ones are skipped by name."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from fedmed.config import InputConfig, SampleUnit, VolumeConfig
from fedmed.data import dataset_fingerprint, load_site_data, synthesize_ct_hospitals
from fedmed.errors import DataError
from tests.data.dicom_series import write_enhanced_ct

SHAPE = (8, 16, 16)
SPEC = InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=SHAPE, window=(-600.0, 1500.0)))


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_ct_hospitals(
        tmp_path_factory.mktemp("ct"), studies_per_site=10, slices=6, image_size=24, seed=1
    )


@pytest.fixture
def site(hospitals: list[Path], tmp_path: Path) -> Path:
    """A private copy of site-a, to damage."""
    return Path(shutil.copytree(hospitals[0], tmp_path / "site-a"))


def manifest_rows(site: Path) -> list[list[str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.reader(handle))[1:]


def write_manifest(site: Path, rows: list[list[str]]) -> None:
    with open(site / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "split"])
        writer.writerows(rows)


def test_series_named_by_folder_and_by_uid_become_volumes(hospitals: list[Path]) -> None:
    by_folder, by_uid = load_site_data(hospitals[0], spec=SPEC), load_site_data(hospitals[2], spec=SPEC)
    for data in (by_folder, by_uid):
        assert len(data.train) + len(data.test) == 10 and not data.skipped
        assert data.train.images.shape[1:] == (1, *SHAPE) and data.train.images.dtype.is_floating_point
        assert float(data.train.images.min()) >= 0.0 and float(data.train.images.max()) <= 1.0
        assert all(len(sources) == 6 for sources in data.train.sources)  # every slice, in order
        assert data.train.metadata[0].modality == "CT" and data.train.metadata[0].manufacturer
    assert by_uid.train.files[0].startswith("1.2.")  # named as its manifest names it


def test_volumes_follow_the_slice_positions_not_the_file_names(site: Path) -> None:
    """Reversing one study's positions (same files and names) flips its volume along z."""
    reference = load_site_data(site, spec=SPEC)
    first_row = manifest_rows(site)[0][0]
    files = sorted((site / first_row).glob("*.dcm"))
    for path in files:
        ds = dcmread(path)
        position = list(ds.ImagePositionPatient)
        position[2] = -float(position[2]) - 100.0
        ds.ImagePositionPatient = position
        ds.save_as(path, enforce_file_format=True)
    flipped = load_site_data(site, spec=SPEC)
    split = "train" if first_row in reference.train.files else "test"
    before = getattr(reference, split).images[getattr(reference, split).files.index(first_row)]
    after = getattr(flipped, split).images[getattr(flipped, split).files.index(first_row)]
    np.testing.assert_allclose(after.numpy(), before.flip(1).numpy(), atol=1e-5)


def test_bad_series_are_skipped_by_name_and_the_rest_is_used(site: Path) -> None:
    rows = manifest_rows(site)
    # A missing slice: remove the third of one study's slices by position.
    missing = rows[0][0]
    by_position = sorted((site / missing).glob("*.dcm"), key=lambda p: float(dcmread(p).ImagePositionPatient[2]))
    by_position[2].unlink()
    # Two series in one folder: another study's slices copied in.
    mixed = rows[1][0]
    for path in (site / rows[2][0]).glob("*.dcm"):
        shutil.copy(path, site / mixed / path.name)
    # A slice of another patient mixed in.
    foreign = rows[3][0]
    path = sorted((site / foreign).glob("*.dcm"))[0]
    ds = dcmread(path)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(path, enforce_file_format=True)
    # A UID that names no series here.
    rows.append(["1.2.3.4.5", "0", "train"])
    write_manifest(site, rows)

    data = load_site_data(site, spec=SPEC)
    reasons = {skipped.path: skipped.reason for skipped in data.skipped}
    assert reasons[missing].startswith("missing slice")
    assert reasons[mixed].startswith("holds 2 series") and "SeriesInstanceUID" in reasons[mixed]
    assert reasons[foreign].startswith("another patient's slice")
    assert reasons["1.2.3.4.5"].startswith("no series with this SeriesInstanceUID")
    assert len(data.train) + len(data.test) == 10 - 3  # the rest is used


def test_an_enhanced_multiframe_file_is_one_record(site: Path) -> None:
    write_enhanced_ct(site / "enhanced.dcm", count=6)
    rows = manifest_rows(site) + [["enhanced.dcm", "1", "train"]]
    write_manifest(site, rows)
    data = load_site_data(site, spec=SPEC)
    index = data.train.files.index("enhanced.dcm")
    assert data.train.sources[index] == ("enhanced.dcm",)
    assert data.train.images[index].shape == (1, *SHAPE)


def test_a_lone_image_is_not_a_volume(site: Path) -> None:
    slice_file = sorted((site / manifest_rows(site)[0][0]).glob("*.dcm"))[0]
    shutil.copy(slice_file, site / "single.dcm")
    write_manifest(site, manifest_rows(site) + [["single.dcm", "0", "test"]])
    data = load_site_data(site, spec=SPEC)
    (skipped,) = [s for s in data.skipped if s.path == "single.dcm"]
    assert "a single image, not a volume" in skipped.reason


def test_unknown_series_name_is_a_manifest_error(site: Path) -> None:
    write_manifest(site, manifest_rows(site) + [["studies/none", "0", "train"]])
    with pytest.raises(DataError, match=r"line 12: unknown series 'studies/none'"):
        load_site_data(site, spec=SPEC)


def test_volumes_are_cached_by_content_and_parameters(site: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = load_site_data(site, spec=SPEC, cache_dir=cache_dir)
    again = load_site_data(site, spec=SPEC, cache_dir=cache_dir)
    np.testing.assert_array_equal(first.train.images.numpy(), again.train.images.numpy())
    entries = list(cache_dir.rglob("*.npy"))
    assert len(entries) == 10 and all(entry.stat().st_mode & 0o777 == 0o600 for entry in entries)
    other = InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=SHAPE, window=(40.0, 400.0)))
    load_site_data(site, spec=other, cache_dir=cache_dir)
    assert len(list(cache_dir.rglob("*.npy"))) == 20  # another window is another entry


def test_the_fingerprint_covers_every_slice(site: Path) -> None:
    before = dataset_fingerprint(load_site_data(site, spec=SPEC))
    train_row = next(row for row in manifest_rows(site) if row[2] == "train")
    path = sorted((site / train_row[0]).glob("*.dcm"))[-1]
    ds = dcmread(path)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert dataset_fingerprint(load_site_data(site, spec=SPEC)) != before


def test_a_cached_load_does_not_parse_headers_again(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouping is remembered by the files' names, sizes and times; a touched file is grouped again."""
    from fedmed.data import dataset as dataset_module

    cache_dir = tmp_path / "cache"
    first = load_site_data(site, spec=SPEC, cache_dir=cache_dir)
    calls: list[int] = []
    group = dataset_module.group_series
    monkeypatch.setattr(dataset_module, "group_series", lambda files: calls.append(len(files)) or group(files))
    again = load_site_data(site, spec=SPEC, cache_dir=cache_dir)
    assert calls == [] and again.train.files == first.train.files and again.train.sources == first.train.sources
    np.testing.assert_array_equal(again.train.images.numpy(), first.train.images.numpy())
    assert again.train.metadata == first.train.metadata
    touched = sorted((site / manifest_rows(site)[0][0]).glob("*.dcm"))[0]
    touched.write_bytes(touched.read_bytes())  # same bytes, a new modification time
    load_site_data(site, spec=SPEC, cache_dir=cache_dir)
    assert calls == [6]  # that one study's slices, and nothing else
