"""Check any folder of DICOM files before training: what is readable, what is not and why,
and who is in it (modality, vendor, sex, age band, label); then which series it holds and
whether each is one volume (slice count, spacing, orientation, photometric interpretation,
problems), as a CT or MR task would read it.

A site runs this on its own data; nothing leaves the machine. The report holds tag
summaries only, never pixel data or patient identifiers. Files are decoded at a small size
so that truncated or undecodable pixel data is caught, not just a readable header.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedmed.data.dataset import MANIFEST_NAME, read_manifest
from fedmed.data.dicom import (
    DicomMetadata,
    DicomReadError,
    read_dicom_image,
    read_dicom_metadata,
)
from fedmed.data.series import DicomSeries, RefusedSeries, SeriesIdentity, group_series
from fedmed.errors import DataError

__all__ = ["FileReport", "FolderReport", "SeriesReport", "age_band", "check_folder", "render_report"]

CHECK_SIZE = 64  # decode size: small, but every byte of pixel data is still decoded
AGE_BANDS = ("<40", "40-59", "60-79", "80+", "unknown")
_LIST_ALL_UP_TO = 50  # beyond this many readable files, the table lists problems only


@dataclass(frozen=True)
class FileReport:
    path: str  # relative to the checked folder
    ok: bool
    reason: str | None = None  # short and stable, so reports can count them
    detail: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    sex: str | None = None
    age_years: float | None = None
    label: int | None = None


@dataclass(frozen=True)
class SeriesReport:
    """One series as a volume would be read from it; `problems` are (reason, detail) pairs."""

    folder: str  # relative to the checked folder
    study_uid: str
    series_uid: str
    description: str | None
    ok: bool
    files: int
    modality: str | None = None
    slices: int | None = None
    spacing_mm: tuple[float, float, float] | None = None  # (slice, row, column)
    orientation: str | None = None  # axial, coronal, sagittal, oblique
    photometric: str | None = None
    enhanced: bool = False
    problems: tuple[tuple[str, str], ...] = ()
    label: int | None = None


@dataclass
class FolderReport:
    folder: str
    files: list[FileReport] = field(default_factory=list)
    has_manifest: bool = False
    series: list[SeriesReport] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts over all files; tag and label counts cover readable files only."""
        readable = [f for f in self.files if f.ok]
        result: dict[str, Any] = {
            "total": len(self.files),
            "readable": len(readable),
            "skipped": len(self.files) - len(readable),
            "skipped_reasons": _count(f.reason for f in self.files if not f.ok),
            "modalities": _count(f.modality or "unknown" for f in readable),
            "manufacturers": _count(f.manufacturer or "unknown" for f in readable),
            "sex": _count(f.sex or "unknown" for f in readable),
            "age_bands": {band: 0 for band in AGE_BANDS}
            | _count(age_band(f.age_years) for f in readable),
        }
        if self.has_manifest:
            result["labels"] = _count(
                "unlabelled" if f.label is None else str(f.label) for f in readable
            )
        volumes = [s for s in self.series if s.ok and (s.slices or 0) > 1]
        result["series"] = {
            "total": len(self.series),
            "volumes": len(volumes),
            "single_images": sum(1 for s in self.series if s.ok and s.slices == 1),
            "refused": sum(1 for s in self.series if not s.ok),
            "refused_reasons": _count(reason for s in self.series if not s.ok for reason, _ in s.problems),
            "modalities": _count(s.modality or "unknown" for s in volumes),
        }
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "files": [asdict(f) for f in self.files],
            "series": [_as_lists(asdict(s)) for s in self.series],
            "summary": self.summary(),
        }


def check_folder(folder: Path, *, manifest: Path | None = None) -> FolderReport:
    """Try every regular file under `folder` (recursively, hidden files aside).

    Labels come from `manifest`, else from `folder/labels.csv` when it exists.

    Raises:
        DataError: when the folder does not exist or the manifest is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Folder {folder} does not exist or is not a folder; check the path")
    if manifest is None and (folder / MANIFEST_NAME).is_file():
        manifest = folder / MANIFEST_NAME
    labels: dict[str, int] = {}
    if manifest is not None:
        rows = read_manifest(Path(manifest), root=folder, series=True)  # files, folders or series UIDs
        labels = {row.file: int(row.values["label"]) for row in rows if row.values.get("label") in ("0", "1")}
    skip = {Path(manifest).resolve()} if manifest is not None else set()

    report = FolderReport(folder=str(folder), has_manifest=manifest is not None)
    paths = [path for path in _walk_files(folder) if path.resolve() not in skip]
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        report.files.append(_check_file(path, relative, labels.get(relative)))
    grouping = group_series(paths)
    report.series = sorted(
        [_series_report(folder, s, labels) for s in grouping.series]
        + [_refused_report(folder, r, labels) for r in grouping.refused],
        key=lambda item: (item.folder, item.series_uid),
    )
    return report


def render_report(report: FolderReport, console: Console) -> None:
    """Print a per-file table (problems always; readable files too when few) and the summary."""
    summary = report.summary()
    show_ok = summary["readable"] <= _LIST_ALL_UP_TO
    table = Table(title=Text(f"DICOM check: {report.folder}"))
    for column in ("file", "status", "reason", "modality", "manufacturer", "sex", "age"):
        table.add_column(column)
    if report.has_manifest:
        table.add_column("label")
    for item in report.files:
        if item.ok and not show_ok:
            continue
        reason = item.reason or ""
        if item.detail:
            reason += f" ({item.detail})"
        cells = [
            item.path,
            reason,
            item.modality or "",
            item.manufacturer or "",
            item.sex or "",
            "" if item.age_years is None else f"{item.age_years:g}",
        ]
        if report.has_manifest:
            cells.append("" if item.label is None else str(item.label))
        # File names and reasons are untrusted text: Text() keeps '[' from being markup.
        status = Text("ok", style="green") if item.ok else Text("skipped", style="red")
        texts = [Text(cell) for cell in cells]
        table.add_row(texts[0], status, *texts[1:])
    if table.row_count:
        console.print(table)
    if not show_ok:
        console.print(f"{summary['readable']} readable files not listed; showing problems only.")
    console.print(
        f"[bold]{summary['total']}[/bold] files: {summary['readable']} readable, "
        f"{summary['skipped']} skipped"
    )
    for key in ("skipped_reasons", "modalities", "manufacturers", "sex", "age_bands", "labels"):
        if summary.get(key):
            counts = ", ".join(f"{name}: {count}" for name, count in summary[key].items())
            console.print(f"  {key.replace('_', ' ')}: {counts}", markup=False)
    _render_series(report, console)


def _render_series(report: FolderReport, console: Console) -> None:
    """A table of series (refused ones always; all when few) and one summary line."""
    if not report.series:
        return
    listed = [s for s in report.series if not s.ok or len(report.series) <= _LIST_ALL_UP_TO]
    table = Table(title=Text("Series (read as volumes with data.sample: series)"))
    for column in ("folder", "series", "status", "modality", "slices", "spacing mm", "orientation", "photometric"):
        table.add_column(column)
    table.add_column("problems", ratio=1)
    for item in listed:
        spacing = "" if item.spacing_mm is None else "x".join(f"{v:.3g}" for v in item.spacing_mm)
        problems = "; ".join(f"{reason} ({detail})" for reason, detail in item.problems)
        status = Text("volume" if (item.slices or 0) > 1 else "image", style="green") if item.ok else Text(
            "refused", style="red"
        )
        name = item.description or item.series_uid
        cells = [item.folder, name, item.modality or "", "" if item.slices is None else str(item.slices),
                 spacing, item.orientation or "", item.photometric or "", problems]
        texts = [Text(cell) for cell in cells]  # untrusted text: no markup
        table.add_row(texts[0], texts[1], status, *texts[2:])
    if table.row_count:
        console.print(table)
    counts = report.summary()["series"]
    line = (
        f"[bold]{counts['total']}[/bold] series: {counts['volumes']} volumes, "
        f"{counts['single_images']} single images, {counts['refused']} refused"
    )
    console.print(line)
    if counts["refused_reasons"]:
        reasons = ", ".join(f"{name}: {count}" for name, count in counts["refused_reasons"].items())
        console.print(f"  refused: {reasons}", markup=False)


def _series_report(folder: Path, series: DicomSeries, labels: dict[str, int]) -> SeriesReport:
    return SeriesReport(
        **_identity_fields(folder, series.identity),
        ok=True,
        files=len(series.files),
        modality=series.modality,
        slices=series.depth,
        spacing_mm=tuple(round(v, 4) for v in series.spacing),
        orientation=_orientation_name(series.orientation),
        photometric=series.photometric,
        enhanced=series.enhanced,
        label=_series_label(folder, series.identity, series.files, labels),
    )


def _refused_report(folder: Path, refused: RefusedSeries, labels: dict[str, int]) -> SeriesReport:
    return SeriesReport(
        **_identity_fields(folder, refused.identity),
        ok=False,
        files=len(refused.files),
        problems=tuple((p.reason, p.detail) for p in refused.problems),
        label=_series_label(folder, refused.identity, refused.files, labels),
    )


def _identity_fields(folder: Path, identity: SeriesIdentity) -> dict[str, Any]:
    place = Path(identity.folder)
    relative = (
        place.relative_to(folder).as_posix() if place.is_absolute() and place.is_relative_to(folder) else str(place)
    )
    return {
        "folder": relative,
        "study_uid": identity.study_uid,
        "series_uid": identity.series_uid,
        "description": identity.description,
    }


def _series_label(folder: Path, identity: SeriesIdentity, files: tuple[str, ...], labels: dict[str, int]) -> int | None:
    """The manifest's label for a series named by UID, by its folder, or by its single file."""
    if identity.series_uid in labels:
        return labels[identity.series_uid]
    relative = _identity_fields(folder, identity)["folder"]
    if relative in labels:
        return labels[relative]
    if len(files) == 1:
        return labels.get(Path(files[0]).relative_to(folder).as_posix() if Path(files[0]).is_absolute() else files[0])
    return None


def _orientation_name(orientation: tuple[float, ...] | None) -> str | None:
    """axial, coronal or sagittal when the slice normal lies within about 18 degrees of an axis."""
    if orientation is None:
        return None
    row, column = orientation[:3], orientation[3:]
    normal = [row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
              row[0] * column[1] - row[1] * column[0]]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < 0.95:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def age_band(age_years: float | None) -> str:
    """Coarse age bands for subgroup counts."""
    if age_years is None:
        return "unknown"
    if age_years < 40:
        return "<40"
    if age_years < 60:
        return "40-59"
    if age_years < 80:
        return "60-79"
    return "80+"


def _walk_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, sorted, skipping hidden files and hidden folders."""
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found)


def _check_file(path: Path, relative: str, label: int | None) -> FileReport:
    reason = detail = None
    try:
        read_dicom_image(path, size=CHECK_SIZE)
    except DicomReadError as exc:
        reason, detail = exc.reason, exc.detail
    metadata = DicomMetadata()
    if reason != "not a DICOM file":
        with contextlib.suppress(DicomReadError):  # the image error above already says what is wrong
            metadata = read_dicom_metadata(path)
    return FileReport(
        path=relative,
        ok=reason is None,
        reason=reason,
        detail=detail,
        modality=metadata.modality,
        manufacturer=metadata.manufacturer,
        sex=metadata.sex,
        age_years=metadata.age_years,
        label=label,
    )


def _as_lists(value: Any) -> Any:
    """Tuples as JSON lists, so that a report equals itself after a JSON round trip."""
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(item) for item in value]
    return value


def _count(values: Any) -> dict[str, int]:
    return dict(Counter(values).most_common())
