"""Tests for fedmed.data.cache: hits skip decoding; keys follow content and parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedmed.data import cache as cache_module
from fedmed.data.cache import ImageCache, cache_key
from fedmed.data.dicom import DicomReadError
from fedmed.data.synth import synthesize_hospitals


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    (site,) = synthesize_hospitals(
        tmp_path_factory.mktemp("cache-site"), n_sites=1, images_per_site=4, image_size=24
    )
    return sorted((site / "images").glob("*.dcm"))


def test_second_load_is_a_hit_without_decoding(
    dicom_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ImageCache(tmp_path / "cache")
    first = cache.load_or_decode(dicom_files[0], size=16)
    assert (cache.hits, cache.misses) == (0, 1)

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(cache_module, "read_dicom_image", refuse)
    second = cache.load_or_decode(dicom_files[0], size=16)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32 and second.shape == (1, 16, 16)


def test_cache_survives_a_new_instance(dicom_files: list[Path], tmp_path: Path) -> None:
    ImageCache(tmp_path).load_or_decode(dicom_files[0], size=16)
    later = ImageCache(tmp_path)
    later.load_or_decode(dicom_files[0], size=16)
    assert (later.hits, later.misses) == (1, 0)


def test_key_follows_bytes_and_size(dicom_files: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.dcm"
    shutil.copy(dicom_files[0], copy)
    assert cache_key(copy, size=16) == cache_key(dicom_files[0], size=16)  # content, not path
    assert cache_key(copy, size=16) != cache_key(copy, size=32)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF  # change one pixel byte
    copy.write_bytes(bytes(data))
    assert cache_key(copy, size=16) != cache_key(dicom_files[0], size=16)


def test_key_follows_preprocessing_version(
    dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cache_key(dicom_files[0], size=16)
    bumped = cache_module.PREPROCESSING_VERSION + 1
    monkeypatch.setattr(cache_module, "PREPROCESSING_VERSION", bumped)
    assert cache_key(dicom_files[0], size=16) != before


def test_changed_file_or_size_misses(dicom_files: list[Path], tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    cache.load_or_decode(dicom_files[0], size=16)
    cache.load_or_decode(dicom_files[0], size=20)
    cache.load_or_decode(dicom_files[1], size=16)
    assert (cache.hits, cache.misses) == (0, 3)


def test_entries_are_npy_without_temporaries(dicom_files: list[Path], tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    for path in dicom_files:
        cache.load_or_decode(path, size=16)
    stored = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(stored) == len(dicom_files)
    assert all(name.endswith(".npy") and not name.startswith(".tmp") for name in stored)


def test_damaged_entry_is_decoded_again(dicom_files: list[Path], tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    expected = cache.load_or_decode(dicom_files[0], size=16)
    (entry,) = tmp_path.rglob("*.npy")
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(cache.load_or_decode(dicom_files[0], size=16), expected)
    assert (cache.hits, cache.misses) == (0, 2)


def test_failures_are_not_cached(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_text("not a DICOM file")
    cache = ImageCache(tmp_path / "cache")
    for _ in range(2):
        with pytest.raises(DicomReadError, match="not a DICOM file"):
            cache.load_or_decode(bad, size=16)
    assert cache.misses == 2 and not list((tmp_path / "cache").rglob("*.npy"))


def test_missing_file_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match="absent.dcm: file not found"):
        ImageCache(tmp_path).load_or_decode(tmp_path / "absent.dcm", size=16)


def test_cached_patient_images_are_owner_only(dicom_files: list[Path], tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "state" / "cache")
    cache.load_or_decode(dicom_files[0], size=16)
    (entry,) = (tmp_path / "state" / "cache").rglob("*.npy")
    assert entry.stat().st_mode & 0o777 == 0o600
    assert entry.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "cache").stat().st_mode & 0o777 == 0o700
