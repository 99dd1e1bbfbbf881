"""An on-disk cache of decoded images and volumes, so later epochs and runs do not decode DICOM again.

The key is the SHA-256 of the files' bytes (one file for an image, every slice in order for a
volume) plus the preprocessing parameters, so an edited file, another size or a change to
the pixel pipeline (bump `PREPROCESSING_VERSION`) misses instead of serving a stale array.
Files are identified by content, not path: renaming or moving a site folder keeps its cache.

Failures are not cached: a file that could not be decoded is tried again next time, so
installing a missing decoder (pylibjpeg, pillow, gdcm) takes effect without clearing anything.
Decoding failures are cheap next to training, and are reported again every run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmed.data.dicom import DicomReadError, read_dicom_image

__all__ = ["PREPROCESSING_VERSION", "ImageCache", "cache_key", "content_key", "listing_key"]

# Bump whenever read_dicom_image would return different pixels for the same file.
PREPROCESSING_VERSION = 2

_CHUNK_BYTES = 1 << 20


class ImageCache:
    """Decoded float32 arrays ((channels, size, size) images, (1, D, H, W) volumes) under `root/<key[:2]>/<key>.npy`.

    They are patient images: folders are created owner-only (0700) and files 0600. A site's
    cache lives in its own state folder unless its node config names another.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def load_or_decode(self, path: Path, *, size: int, channels: int = 1) -> np.ndarray:
        """Return the cached array for `path` at `size`, decoding and storing it on a miss.

        Raises:
            DicomReadError: when the file cannot be read or decoded (nothing is stored).
        """
        key = cache_key(path, size=size, channels=channels)
        return self.load_or_compute(
            key, (channels, size, size), lambda: read_dicom_image(path, size=size, channels=channels)
        )

    def load_or_compute(self, key: str, shape: tuple[int, ...], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The array stored under `key` if it has `shape`, else `compute()`, stored (failures are not)."""
        entry = self.root / key[:2] / f"{key}.npy"
        cached = _load_entry(entry, shape)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        array = np.ascontiguousarray(compute(), dtype=np.float32)
        _store_entry(entry, array)
        return array


    def load_record(self, key: str) -> dict[str, Any] | None:
        """A small JSON record stored under `key` (what grouping a folder found), or None."""
        try:
            record = json.loads((self.root / key[:2] / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def store_record(self, key: str, record: dict[str, Any]) -> None:
        _store_bytes(self.root / key[:2] / f"{key}.json", json.dumps(record, sort_keys=True).encode())


def cache_key(path: Path, *, size: int, channels: int = 1) -> str:
    """SHA-256 over the file's bytes and the image preprocessing parameters."""
    return content_key([path], f"image:size={size}:channels={channels}")


def content_key(paths: Sequence[Path], parameters: str) -> str:
    """SHA-256 over the pipeline version, `parameters` and each file's length and bytes, in order.

    Raises:
        DicomReadError: a file cannot be read.
    """
    digest = hashlib.sha256()
    digest.update(f"fedmed-image-cache:v{PREPROCESSING_VERSION}:{parameters}:".encode())
    for path in paths:
        try:
            digest.update(f"{os.path.getsize(path)}:".encode())  # file boundaries count
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as exc:
            raise DicomReadError(path, "file not found or unreadable", exc.strerror) from exc
    return digest.hexdigest()


def listing_key(paths: Sequence[Path], parameters: str) -> str:
    """SHA-256 over the pipeline version, `parameters` and each file's name, size and modification time.

    Cheap (no file is read): for results derived from headers, where a touched file should
    miss; never for pixels, which `content_key` keys by their bytes.
    """
    digest = hashlib.sha256(f"fedmed-listing:v{PREPROCESSING_VERSION}:{parameters}:".encode())
    for path in paths:
        try:
            status = os.stat(path)
        except OSError as exc:
            raise DicomReadError(path, "file not found or unreadable", exc.strerror) from exc
        digest.update(f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_entry(entry: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when absent or damaged (then it is decoded again)."""
    try:
        image = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if image.shape != shape or image.dtype != np.float32:
        return None
    return image


def _store_entry(entry: Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, image, allow_pickle=False)
    _store_bytes(entry, buffer.getvalue())


def _store_bytes(entry: Path, data: bytes) -> None:
    """Write atomically (temporary file, then os.replace) so readers never see half a file; owner-only."""
    entry.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry.parent.mkdir(mode=0o700, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=entry.suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, entry)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
