"""Load one site's labelled images or volumes into tensors, skipping (and listing) records that cannot be read.

A site folder holds `labels.csv` with columns `file,split` and the task's target columns
(the binary task's `label` 0 or 1; fedmed.tasks says what the others read) and the DICOM
files it names. With `sample: image` each row names one file. With
`sample: series` a row names one series: a folder holding it, a single (enhanced
multi-frame) file, or its SeriesInstanceUID anywhere under the site folder. A bad manifest
is an error, because it is the site's statement of what to train on; a bad image, series
or target (a mask that does not fit its image, a missing label) is skipped and reported,
because one corrupt study in an archive of thousands should not stop a site.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedmed.config.schema import InputConfig, SampleUnit
from fedmed.data.cache import ImageCache, cache_key, content_key, listing_key
from fedmed.data.dicom import (
    DicomMetadata,
    DicomReadError,
    read_dicom_image,
    read_dicom_metadata,
)
from fedmed.data.series import DicomSeries, SeriesError, group_series, read_volume
from fedmed.data.targets import BinaryLabels, TargetError, TargetReader
from fedmed.data.volume import preprocess_volume, volume_preprocessing_key
from fedmed.errors import DataError

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "ImageSet",
    "ManifestRow",
    "SiteData",
    "SkippedFile",
    "load_site_data",
    "manifest_names_series",
    "read_manifest",
]

MANIFEST_NAME = "labels.csv"
MANIFEST_COLUMNS = ("file", "split")
"""Every manifest's columns; the task adds its own (``label``, one per finding, ``mask``)."""
SPLITS = ("train", "test")

_MANIFEST_HELP = (
    "a CSV file with header 'file,split' and the task's columns (binary: 'label', 0 or 1): file "
    "relative to the site folder (with sample: series, a folder, a file or a SeriesInstanceUID), "
    "split train or test"
)
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")  # PS3.5 9.1: digits and dots, at most 64 characters
_MAX_LISTED = 10


@dataclass(frozen=True)
class SkippedFile:
    """A manifest entry left out of training, and why (`reason` starts with a short, countable part)."""

    path: str
    reason: str

    @property
    def short_reason(self) -> str:
        return self.reason.split(" (", 1)[0]


@dataclass(frozen=True)
class ManifestRow:
    file: str
    split: str
    line: int
    values: dict[str, str]
    """Every other column of the row, by header name (the task reads its targets from them)."""


@dataclass
class ImageSet:
    """Images (N, C, H, W) or volumes (N, 1, D, H, W), float32 in [0, 1]; targets (N, ...); per-record tags.

    Targets are the task's: labels (N,) or (N, L) float32, classes (N,) int64, label maps
    (N, *spatial) int64; `target_texts` gives each one exactly, for the dataset fingerprint.

    `files` names each record as the manifest does; `sources` lists the files it was read
    from, relative to the site folder (one for an image, every slice of a series in order).
    """

    images: torch.Tensor
    targets: torch.Tensor
    metadata: list[DicomMetadata]
    files: list[str]
    sources: list[tuple[str, ...]]
    target_texts: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def as_torch_dataset(self) -> TensorDataset:
        return TensorDataset(self.images, self.targets)


@dataclass
class SiteData:
    site_dir: Path
    train: ImageSet
    test: ImageSet
    skipped: list[SkippedFile]


def load_site_data(
    site_dir: Path, *, spec: InputConfig, targets: TargetReader | None = None, cache_dir: Path | None = None,
) -> SiteData:
    """Read `site_dir/labels.csv` and decode every record it lists as `spec` says (through the cache if given).

    `targets` is the task (fedmed.tasks), which reads each record's target; without one the
    manifest is read as the binary task's (a `label` column of 0 or 1).

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
    series = spec.sample is SampleUnit.SERIES
    targets = targets if targets is not None else BinaryLabels()
    rows = read_manifest(manifest, root=site_dir, series=series, targets=targets)
    cache = ImageCache(Path(cache_dir)) if cache_dir is not None else None

    kept: dict[str, list[_Record]] = {s: [] for s in SPLITS}
    skipped: list[SkippedFile] = []
    reasons: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    records = _series_records(site_dir, rows, spec, cache) if series else _image_records(site_dir, rows, spec, cache)
    for row, outcome in records:
        if not isinstance(outcome, SkippedFile):
            outcome = _with_target(outcome, site_dir, spec, targets, cache)
        if isinstance(outcome, SkippedFile):
            skipped.append(outcome)
            reasons[row.split][outcome.short_reason] += 1
        else:
            kept[row.split].append(outcome)

    for split in SPLITS:
        if not kept[split]:
            raise DataError(_no_usable_message(site_dir, split, rows, reasons[split]))
    return SiteData(
        site_dir=site_dir,
        train=_image_set(kept["train"], targets),
        test=_image_set(kept["test"], targets),
        skipped=skipped,
    )


@dataclass(frozen=True)
class _Record:
    row: ManifestRow
    array: np.ndarray
    metadata: DicomMetadata
    sources: tuple[str, ...]
    key: str | None = None
    """The image's cache key (over its files' bytes and the preprocessing); None without a cache."""
    target: np.ndarray | None = None


def _with_target(
    record: _Record, site_dir: Path, spec: InputConfig, targets: TargetReader, cache: ImageCache | None,
) -> _Record | SkippedFile:
    """The record with its target read, or the row skipped with why (a mask that does not fit, say).

    A target read from files of its own (a segmentation mask) is cached like an image,
    keyed by the content of those files and by the image's own key, so the image's files
    are not read again.
    """
    row = record.row
    sources = [site_dir / name for name in record.sources]

    def read() -> np.ndarray:
        return targets.read_target(row, site_dir=site_dir, sources=sources, spec=spec)

    try:
        files = targets.target_files(row)
        if cache is not None and record.key and files and all((site_dir / name).is_file() for name in files):
            parameters = f"target:{type(targets).__name__}:{spec.model_dump_json()}:image={record.key}"
            key = content_key([site_dir / name for name in files], parameters)
            target = cache.load_or_compute(key, tuple(spec.spatial_shape), read)
        else:
            target = read()
    except TargetError as exc:
        return SkippedFile(row.file, exc.reason + (f" ({exc.detail})" if exc.detail else ""))
    except DicomReadError as exc:  # a mask file that cannot be read (fedmed.data.masks)
        return SkippedFile(row.file, exc.reason + (f" ({exc.detail})" if exc.detail else ""))
    return _Record(row, record.array, record.metadata, record.sources, record.key, np.asarray(target))


def _image_records(
    site_dir: Path, rows: list[ManifestRow], spec: InputConfig, cache: ImageCache | None
) -> Iterator[tuple[ManifestRow, _Record | SkippedFile]]:
    """One image per row, decoded at the model's size and channels."""
    for row in rows:
        path = site_dir / row.file
        key = None
        try:
            if cache is not None:
                key = cache_key(path, size=spec.image_size, channels=spec.channels)
                image = cache.load_or_compute(
                    key, (spec.channels, spec.image_size, spec.image_size),
                    functools.partial(read_dicom_image, path, size=spec.image_size, channels=spec.channels),
                )
                metadata = _cached_tags(cache, key, path)
            else:
                image = read_dicom_image(path, size=spec.image_size, channels=spec.channels)
                metadata = read_dicom_metadata(path)
        except DicomReadError as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            yield row, SkippedFile(row.file, exc.reason + detail)
            continue
        yield row, _Record(row, image, metadata, (row.file,), key)


def _cached_tags(cache: ImageCache, image_key: str, path: Path) -> DicomMetadata:
    """The file's tags, stored beside its cached image: parsing headers would dominate a cached epoch."""
    key = hashlib.sha256(f"{image_key}:tags".encode()).hexdigest()
    stored = cache.load_record(key)
    if stored is not None:
        try:
            return DicomMetadata(**stored)
        except TypeError:
            pass  # an entry of another shape: read the header again
    metadata = read_dicom_metadata(path)
    cache.store_record(key, asdict(metadata))
    return metadata


@dataclass(frozen=True)
class _Located:
    """A checked series found for a row: its files in slice order, and its tags."""

    files: tuple[str, ...]
    single_slice: bool
    metadata: DicomMetadata


def _series_records(
    site_dir: Path, rows: list[ManifestRow], spec: InputConfig, cache: ImageCache | None
) -> Iterator[tuple[ManifestRow, _Record | SkippedFile]]:
    """One volume per row: the series the row names, checked, resampled and windowed as `spec` says."""
    by_uid: dict[str, _Located | str] | None = None
    for row in rows:
        if _UID.fullmatch(row.file) and not (site_dir / row.file).exists():
            if by_uid is None:  # one scan of the whole site folder, only when a row needs it
                by_uid = _indexed(cache, sorted(_walk(site_dir)), "uids", _series_by_uid)
            found = by_uid.get(row.file, "no series with this SeriesInstanceUID under the site folder")
        else:
            target = site_dir / row.file
            files = sorted(_walk(target)) if target.is_dir() else [target]
            found = _indexed(cache, files, "one", _one_series)[""]
        if isinstance(found, str):
            yield row, SkippedFile(row.file, found)
            continue
        if found.single_slice:
            yield row, SkippedFile(row.file, "a single image, not a volume (sample: series needs a CT or MR series)")
            continue
        try:
            volume, key = _volume(found, spec, cache)
        except (DicomReadError, SeriesError) as exc:
            yield row, SkippedFile(row.file, _why(exc))
            continue
        except DataError as exc:  # a blank volume without a window
            yield row, SkippedFile(row.file, f"blank volume ({exc})")
            continue
        sources = tuple(os.path.relpath(name, site_dir).replace(os.sep, "/") for name in found.files)
        yield row, _Record(row, volume, found.metadata, sources, key)


def _located(series: DicomSeries) -> _Located:
    return _Located(series.files, series.is_single_slice, read_dicom_metadata(Path(series.files[0])))


def _one_series(files: list[Path]) -> dict[str, _Located | str]:
    """The one series `files` hold (under the key ""), or why there is not exactly one."""
    grouping = group_series(files)
    if grouping.refused:
        return {"": "; ".join(str(problem.reason) + f" ({problem.detail})" for problem in grouping.problems)}
    if not grouping.series:
        reasons = Counter(exc.reason for exc in grouping.skipped)
        why = ", ".join(f"{count} x {reason}" for reason, count in reasons.most_common()) or "no files"
        return {"": f"no image series ({why})"}
    if len(grouping.series) > 1:
        uids = ", ".join(s.identity.series_uid for s in grouping.series)
        return {"": (
            f"holds {len(grouping.series)} series ({uids}); name one by its SeriesInstanceUID in "
            f"{MANIFEST_NAME}, never several in one row"
        )}
    return {"": _located(grouping.series[0])}


def _series_by_uid(files: list[Path]) -> dict[str, _Located | str]:
    """Every series among `files` by SeriesInstanceUID (a refused one maps to why)."""
    grouping = group_series(files)
    found: dict[str, _Located | str] = {}
    for refused in grouping.refused:
        found[refused.identity.series_uid] = "; ".join(f"{p.reason} ({p.detail})" for p in refused.problems)
    counts = Counter(s.identity.series_uid for s in grouping.series)
    for series in grouping.series:
        uid = series.identity.series_uid
        found[uid] = _located(series) if counts[uid] == 1 else (
            "this SeriesInstanceUID is used in several studies; name its folder"
        )
    return found


def _indexed(
    cache: ImageCache | None, files: list[Path], kind: str, group: Callable[[list[Path]], dict[str, _Located | str]]
) -> dict[str, _Located | str]:
    """`group(files)`, remembered in the cache under the files' names, sizes and modification times.

    Grouping parses every header, which would otherwise dominate a cached epoch of a CT site;
    any file added, removed, resized or touched gives another key, and the volumes themselves
    stay keyed by content.
    """
    if cache is None:
        return group(files)
    key = listing_key(files, f"series-{kind}")
    stored = cache.load_record(key)
    if stored is not None:
        try:
            return {
                name: value if isinstance(value, str) else _Located(
                    tuple(value["files"]), bool(value["single_slice"]), DicomMetadata(**value["metadata"])
                )
                for name, value in stored.items()
            }
        except (TypeError, KeyError, AttributeError):
            pass  # an entry of another shape: group again
    found = group(files)
    cache.store_record(key, {
        name: value if isinstance(value, str) else {
            "files": list(value.files), "single_slice": value.single_slice, "metadata": asdict(value.metadata),
        }
        for name, value in found.items()
    })
    return found


def _volume(series: _Located, spec: InputConfig, cache: ImageCache | None) -> tuple[np.ndarray, str | None]:
    """The preprocessed volume, and its cache key (None without a cache)."""
    shape = tuple(spec.volume.shape)
    parameters = volume_preprocessing_key(
        target_spacing=spec.volume.spacing, target_shape=shape, window=spec.volume.window
    )

    def compute() -> np.ndarray:
        grouping = group_series([Path(name) for name in series.files])  # the checked series, again
        if len(grouping.series) != 1:
            raise DicomReadError(series.files[0], "file changed since it was grouped")
        return preprocess_volume(
            read_volume(grouping.series[0]), target_spacing=spec.volume.spacing, target_shape=shape,
            window=spec.volume.window,
        )

    if cache is None:
        return compute(), None
    key = content_key([Path(name) for name in series.files], parameters)
    return cache.load_or_compute(key, (1, *shape), compute), key


def _walk(folder: Path) -> Iterator[Path]:
    """Regular files under `folder`, hidden ones and the manifest aside (os.walk: pathlib is slow here)."""
    for top, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            path = os.path.join(top, name)
            if not name.startswith(".") and name != MANIFEST_NAME and os.path.isfile(path):
                yield Path(path)


def _why(exc: DicomReadError | SeriesError) -> str:
    if isinstance(exc, SeriesError):
        return f"{exc.problem.reason} ({exc.problem.detail})"
    return exc.reason + (f" ({exc.detail})" if exc.detail else "")


def manifest_names_series(site_dir: Path) -> bool:
    """True when the site's manifest names series (folders or UIDs) rather than image files only.

    For a step that has no experiment at hand (``fedmed node start`` without ``--experiment``)
    and must still read the records the site's budget is kept under.
    """
    rows = read_manifest(Path(site_dir) / MANIFEST_NAME, root=Path(site_dir), series=True)
    return any(not (Path(site_dir) / row.file).is_file() for row in rows)


def read_manifest(
    manifest: Path, *, root: Path, series: bool = False, targets: TargetReader | None = None,
) -> list[ManifestRow]:
    """Parse and check a labels manifest; every problem is listed in one error.

    With `series`, a row may name a folder or a SeriesInstanceUID as well as a file. With
    `targets`, the task's columns must be there and its manifest-wide checks hold (binary:
    label 0 or 1); without, only `file` and `split` are required (``fedmed data check``).

    Raises:
        DataError: naming the manifest and each bad line (unknown file, a bad label,
            split not train/test, duplicate file, a path outside `root`).
    """
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, restkey="_extra")
            header = [name.strip() for name in (reader.fieldnames or [])]
            required = (*MANIFEST_COLUMNS, *(targets.manifest_columns() if targets is not None else ()))
            missing = [column for column in required if column not in header]
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
        file, split = _normalise_path(raw["file"]), raw["split"]
        problem = _row_problem(root, file, split, seen, series=series)
        if problem is None and targets is not None:
            problem = targets.manifest_problem({**raw, "file": file})
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        seen[file] = line
        values = {key: value for key, value in raw.items() if key not in MANIFEST_COLUMNS}
        rows.append(ManifestRow(file=file, split=split, line=line, values=values))
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(
            f"Labels manifest {manifest} has {len(problems)} bad row(s): {listed}{more}. "
            f"Each row needs a {'series (folder, file or SeriesInstanceUID)' if series else 'file'} under {root}, "
            "the task's target (binary: label 0 or 1) and split train or test"
        )
    return rows


def _clean_row(raw: dict[str, object]) -> dict[str, str]:
    """Strip whitespace; cells beyond the header (restkey "_extra") are ignored."""
    return {key.strip(): str(value or "").strip() for key, value in raw.items() if key != "_extra"}


def _normalise_path(file: str) -> str:
    """One spelling per file: './images\\a.dcm' and 'images/a.dcm' are the same row."""
    return PurePosixPath(file.replace("\\", "/")).as_posix() if file else ""


def _row_problem(root: Path, file: str, split: str, seen: dict[str, int], *, series: bool) -> str | None:
    if not file:
        return "empty file name"
    relative = PurePosixPath(file)
    if relative.is_absolute() or ".." in relative.parts:
        return f"file '{file}' must be a path inside the site folder"
    if file in seen:
        return f"file '{file}' is listed twice (first on line {seen[file]})"
    if series:
        if not (root / relative).exists() and not (_UID.fullmatch(file) and len(file) <= 64):
            return f"unknown series '{file}' (no such folder or file under {root}, and not a SeriesInstanceUID)"
    elif not (root / relative).is_file():
        return f"unknown file '{file}' (not found under {root})"
    if split not in SPLITS:
        return f"split '{split}' for '{file}' must be train or test"
    return None


def _image_set(kept: list[_Record], targets: TargetReader) -> ImageSet:
    stacked = np.stack([np.asarray(record.target) for record in kept])
    return ImageSet(
        images=torch.from_numpy(np.stack([record.array for record in kept])).contiguous(),
        targets=torch.from_numpy(stacked).to(targets.target_dtype).contiguous(),
        metadata=[record.metadata for record in kept],
        files=[record.row.file for record in kept],
        sources=[record.sources for record in kept],
        target_texts=[targets.target_text(record.target) for record in kept],
    )


def _no_usable_message(
    site_dir: Path, split: str, rows: list[ManifestRow], reasons: Counter[str]
) -> str:
    listed = sum(1 for row in rows if row.split == split)
    if listed == 0:
        return (
            f"Site folder {site_dir} has no {split} record: {MANIFEST_NAME} lists none; "
            f"mark some rows with split '{split}'"
        )
    why = ", ".join(f"{count} x {reason}" for reason, count in reasons.most_common())
    return (
        f"Site folder {site_dir} has no usable {split} record: all {listed} listed in "
        f"{MANIFEST_NAME} were skipped ({why}); repair or replace the files, or install "
        "the decoder the reason names"
    )
