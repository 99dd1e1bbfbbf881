"""Load one site's labelled images into tensors, skipping (and listing) files that cannot be read.

A site folder holds `labels.csv` with columns `file,label,split` (file relative to the site
folder, label 0 or 1, split train or test) and the DICOM files it names. A bad manifest is an
error, because it is the site's statement of what to train on; a bad image is skipped and
reported, because one corrupt file in an archive of thousands should not stop a site.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedmed.config.schema import InputConfig
from fedmed.data.cache import ImageCache
from fedmed.data.dicom import (
    DicomMetadata,
    DicomReadError,
    read_dicom_image,
    read_dicom_metadata,
)
from fedmed.errors import DataError

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "ImageSet",
    "ManifestRow",
    "SiteData",
    "SkippedFile",
    "load_site_data",
    "read_manifest",
]

MANIFEST_NAME = "labels.csv"
MANIFEST_COLUMNS = ("file", "label", "split")
SPLITS = ("train", "test")

_MANIFEST_HELP = (
    "a CSV file with header 'file,label,split': file relative to the site folder, "
    "label 0 or 1, split train or test"
)
_MAX_LISTED = 10


@dataclass(frozen=True)
class SkippedFile:
    """A manifest entry left out of training, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ManifestRow:
    file: str
    label: int
    split: str
    line: int


@dataclass
class ImageSet:
    """Images (N, 1, size, size) float32 in [0, 1], labels (N,) float32, and per-image tags."""

    images: torch.Tensor
    labels: torch.Tensor
    metadata: list[DicomMetadata]
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def as_torch_dataset(self) -> TensorDataset:
        return TensorDataset(self.images, self.labels)


@dataclass
class SiteData:
    site_dir: Path
    train: ImageSet
    test: ImageSet
    skipped: list[SkippedFile]


def load_site_data(site_dir: Path, *, spec: InputConfig, cache_dir: Path | None = None) -> SiteData:
    """Read `site_dir/labels.csv` and decode every record it lists as `spec` says (through the cache if given).

    Raises:
        DataError: when the folder or manifest is missing or malformed, or when no train
            or no test image could be read (the message summarises why files were skipped).
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise DataError(
            f"Site folder {site_dir} does not exist or is not a folder; point the site's "
            f"data path at a folder holding {MANIFEST_NAME} and the images it lists"
        )
    manifest = site_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise DataError(f"No labels manifest at {manifest}; create {_MANIFEST_HELP}")
    rows = read_manifest(manifest, root=site_dir)
    cache = ImageCache(Path(cache_dir)) if cache_dir is not None else None

    kept: dict[str, list[tuple[ManifestRow, np.ndarray, DicomMetadata]]] = {s: [] for s in SPLITS}
    skipped: list[SkippedFile] = []
    reasons: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for row in rows:
        path = site_dir / row.file
        try:
            if cache is not None:
                image = cache.load_or_decode(path, size=spec.image_size, channels=spec.channels)
            else:
                image = read_dicom_image(path, size=spec.image_size, channels=spec.channels)
            metadata = read_dicom_metadata(path)
        except DicomReadError as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            skipped.append(SkippedFile(row.file, exc.reason + detail))
            reasons[row.split][exc.reason] += 1
            continue
        kept[row.split].append((row, image, metadata))

    for split in SPLITS:
        if not kept[split]:
            raise DataError(_no_usable_message(site_dir, split, rows, reasons[split]))
    return SiteData(
        site_dir=site_dir,
        train=_image_set(kept["train"]),
        test=_image_set(kept["test"]),
        skipped=skipped,
    )


def read_manifest(manifest: Path, *, root: Path) -> list[ManifestRow]:
    """Parse and check a labels manifest; every problem is listed in one error.

    Raises:
        DataError: naming the manifest and each bad line (unknown file, label not 0/1,
            split not train/test, duplicate file, a path outside `root`).
    """
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, restkey="_extra")
            header = [name.strip() for name in (reader.fieldnames or [])]
            missing = [column for column in MANIFEST_COLUMNS if column not in header]
            if missing:
                raise DataError(
                    f"Labels manifest {manifest} lacks column(s) {', '.join(missing)} "
                    f"(header is {','.join(header) or 'empty'}); it must be {_MANIFEST_HELP}"
                )
            raw_rows = [(reader.line_num, _clean_row(raw)) for raw in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"Cannot read labels manifest {manifest}: {exc}; it must be {_MANIFEST_HELP}"
        ) from exc

    rows: list[ManifestRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, raw in raw_rows:
        if not any(raw.values()):
            continue  # blank line
        file, label, split = _normalise_path(raw["file"]), raw["label"], raw["split"]
        problem = _row_problem(root, file, label, split, seen)
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        seen[file] = line
        rows.append(ManifestRow(file=file, label=int(label), split=split, line=line))
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(
            f"Labels manifest {manifest} has {len(problems)} bad row(s): {listed}{more}. "
            f"Each row needs a file under {root}, label 0 or 1, split train or test"
        )
    return rows


def _clean_row(raw: dict[str, object]) -> dict[str, str]:
    """Strip whitespace; cells beyond the header (restkey "_extra") are ignored."""
    return {key.strip(): str(value or "").strip() for key, value in raw.items() if key != "_extra"}


def _normalise_path(file: str) -> str:
    """One spelling per file: './images\\a.dcm' and 'images/a.dcm' are the same row."""
    return PurePosixPath(file.replace("\\", "/")).as_posix() if file else ""


def _row_problem(root: Path, file: str, label: str, split: str, seen: dict[str, int]) -> str | None:
    if not file:
        return "empty file name"
    relative = PurePosixPath(file)
    if relative.is_absolute() or ".." in relative.parts:
        return f"file '{file}' must be a path inside the site folder"
    if file in seen:
        return f"file '{file}' is listed twice (first on line {seen[file]})"
    if not (root / relative).is_file():
        return f"unknown file '{file}' (not found under {root})"
    if label not in ("0", "1"):
        return f"label '{label}' for '{file}' must be 0 or 1"
    if split not in SPLITS:
        return f"split '{split}' for '{file}' must be train or test"
    return None


def _image_set(kept: list[tuple[ManifestRow, np.ndarray, DicomMetadata]]) -> ImageSet:
    images = torch.from_numpy(np.stack([image for _, image, _ in kept]))
    labels = torch.tensor([row.label for row, _, _ in kept], dtype=torch.float32)
    return ImageSet(
        images=images.contiguous(),
        labels=labels,
        metadata=[metadata for _, _, metadata in kept],
        files=[row.file for row, _, _ in kept],
    )


def _no_usable_message(
    site_dir: Path, split: str, rows: list[ManifestRow], reasons: Counter[str]
) -> str:
    listed = sum(1 for row in rows if row.split == split)
    if listed == 0:
        return (
            f"Site folder {site_dir} has no {split} image: {MANIFEST_NAME} lists none; "
            f"mark some rows with split '{split}'"
        )
    why = ", ".join(f"{count} x {reason}" for reason, count in reasons.most_common())
    return (
        f"Site folder {site_dir} has no usable {split} image: all {listed} listed in "
        f"{MANIFEST_NAME} were skipped ({why}); repair or replace the files, or install "
        "the decoder the reason names"
    )
