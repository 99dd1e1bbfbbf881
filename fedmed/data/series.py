"""Group DICOM files into CT/MR series and read each as one checked, ordered volume.

Clinical CT and MR are volumes: one series (SeriesInstanceUID) holds one slice per file, or
all slices in one enhanced multi-frame file. Files are grouped by their UIDs, never by folder
or name, and slices are ordered by where they lie (ImagePositionPatient projected on the
slice normal, PS3.3 C.7.6.2.1.1), never by InstanceNumber or name, which scanners and
exporters get wrong. A series that is not one evenly spaced stack of one patient's grayscale
slices is refused with a `SeriesProblem`; it is never merged, reordered or patched silently,
because a model trained on a mis-stacked volume learns the defect.

Everything is decided from the headers (`stop_before_pixels`), so a folder of thousands of
files is checked in seconds and a volume too large for memory is refused before a pixel is
decoded. `read_volume` then decodes one checked series into modality units (HU for CT).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.tag import Tag
from pydicom.uid import UID

from fedmed.data.dicom import DicomReadError, decode_pixels, read_dataset
from fedmed.errors import DataError

__all__ = [
    "DEFAULT_MAX_VOLUME_BYTES",
    "DicomSeries",
    "RefusedSeries",
    "SeriesError",
    "SeriesGrouping",
    "SeriesIdentity",
    "SeriesProblem",
    "SeriesSlice",
    "Volume",
    "group_series",
    "read_volume",
]

DEFAULT_MAX_VOLUME_BYTES = 2 * 1024**3
"""Largest float32 volume read by default (2 GiB: a 512 x 512 x 2048 CT)."""

VOXEL_BYTES = 4  # a volume is held as float32
ORIENTATION_TOLERANCE = 1e-3  # per direction cosine: about 0.06 degrees
PIXEL_SPACING_TOLERANCE_MM = 1e-3
DUPLICATE_TOLERANCE_MM = 1e-2  # two slices closer than this lie at one position
SPACING_RELATIVE_TOLERANCE = 0.01  # a step may differ from the series' step by 1 %
SPACING_TOLERANCE_MM = 1e-3  # ... or by this, whichever is larger
TILT_TOLERANCE = 0.05  # sideways shift per step, as a fraction of the step (about 3 degrees)

_MAX_LISTED = 5
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

# SOP classes that have Rows and pixel data yet are not a patient image to read as a volume.
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation (SEG) is a label map, not an image",
    "1.2.840.10008.5.1.4.1.1.66.7": "a label map segmentation is not an image",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose grid is a dose map, not an image",
    "1.2.840.10008.1.3.10": "a DICOMDIR is an index of other files",
}


# --- public types --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesIdentity:
    """Which series a result or problem is about, in the words a site's staff can look up."""

    study_uid: str
    series_uid: str
    description: str | None
    folder: str

    def __str__(self) -> str:
        described = f"'{self.description}' " if self.description else ""
        return (
            f"series {described}(StudyInstanceUID {self.study_uid}, SeriesInstanceUID "
            f"{self.series_uid}) in {self.folder}"
        )


@dataclass(frozen=True)
class SeriesProblem:
    """Why a series was refused: `reason` is short and stable (for counting), `detail` names tag and fix."""

    series: SeriesIdentity
    files: tuple[str, ...]
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.series}: {self.reason} ({self.detail})"


class SeriesError(DataError):
    """A series cannot be read as a volume; `problem` says why."""

    def __init__(self, problem: SeriesProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


@dataclass(frozen=True)
class SeriesSlice:
    """One slice: a file, or one frame (`frame`, 0-based) of an enhanced multi-frame file."""

    path: str
    frame: int | None
    position: tuple[float, float, float] | None
    location: float  # mm along the slice normal; 0.0 for a lone 2-D image without position
    window: tuple[float, float] | None  # (center, width) of the slice's first VOI window


@dataclass(frozen=True)
class DicomSeries:
    """A checked series: slices ordered by increasing position along the slice normal."""

    identity: SeriesIdentity
    modality: str | None
    slices: tuple[SeriesSlice, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm, PS3.3 10.7.1.3
    slice_spacing: float  # mm between slice centres
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column cosines
    photometric: str
    enhanced: bool  # one enhanced multi-frame file holds the slices

    @property
    def depth(self) -> int:
        return len(self.slices)

    @property
    def is_single_slice(self) -> bool:
        """A lone 2-D image: fine for a 2-D task, not a volume for a 3-D one."""
        return len(self.slices) == 1

    @property
    def files(self) -> tuple[str, ...]:
        """Each file once, in slice order."""
        return tuple(dict.fromkeys(s.path for s in self.slices))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, self.rows, self.columns)

    @property
    def volume_bytes(self) -> int:
        return self.depth * self.rows * self.columns * VOXEL_BYTES

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        return (self.slice_spacing, self.pixel_spacing[0], self.pixel_spacing[1])


@dataclass(frozen=True)
class RefusedSeries:
    """A series that is not one volume, with every file it holds and every problem found."""

    identity: SeriesIdentity
    files: tuple[str, ...]
    problems: tuple[SeriesProblem, ...]


@dataclass(frozen=True)
class SeriesGrouping:
    """Every path given ends in exactly one of: a series, a refused series, a skipped file."""

    series: tuple[DicomSeries, ...]
    refused: tuple[RefusedSeries, ...]
    skipped: tuple[DicomReadError, ...]

    @property
    def problems(self) -> tuple[SeriesProblem, ...]:
        return tuple(p for r in self.refused for p in r.problems)


@dataclass(frozen=True, eq=False)
class Volume:
    """A series in modality units (HU for CT), float32 (depth, rows, columns), with its geometry.

    `window` is the files' default VOI window (center, width) of the middle slice, or None;
    MONOCHROME1 volumes are stored as the scanner wrote them and inverted after windowing.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]  # (z, y, x) mm
    window: tuple[float, float] | None
    photometric: str
    series: DicomSeries = field(repr=False)

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from voxel index (slice, row, column) to patient coordinates (LPS, mm).

        PS3.3 C.7.6.2.1.1: the first orientation triplet is the direction of increasing
        column index, the second of increasing row index; slices follow the normal.
        """
        series = self.series
        first = series.slices[0].position
        affine = np.eye(4)
        if series.orientation is None or first is None:
            affine[:3, :3] = np.diag(self.spacing)
            return affine
        row_cosines = np.array(series.orientation[:3])
        column_cosines = np.array(series.orientation[3:])
        normal = np.cross(row_cosines, column_cosines)
        affine[:3, 0] = normal * self.spacing[0]
        affine[:3, 1] = column_cosines * self.spacing[1]
        affine[:3, 2] = row_cosines * self.spacing[2]
        affine[:3, 3] = first
        return affine


# --- grouping ------------------------------------------------------------------------------


def group_series(
    paths: Iterable[Path | str], *, max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
) -> SeriesGrouping:
    """Read the headers of `paths`, group image files into series and check each series.

    Files that are not readable DICOM or not images (SR, SEG, RT plan, DICOMDIR, ...) are
    skipped with a `DicomReadError` each. A series failing a check is refused as a whole,
    with every problem found; other series are unaffected. Two series in one folder are two
    series.

    Args:
        paths: the files to consider; folders are not walked.
        max_volume_bytes: refuse a series whose float32 volume would be larger.
    """
    if max_volume_bytes < 1:
        raise ValueError(f"max_volume_bytes must be positive, got {max_volume_bytes}")
    skipped: list[DicomReadError] = []
    grouped: dict[tuple[str, str], list[_FileHeader]] = {}
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            header = _read_file_header(path)
        except DicomReadError as exc:
            skipped.append(exc)
            continue
        except Exception as exc:  # pydicom raises many types on defective headers; one file must not stop a site
            skipped.append(DicomReadError(path, "invalid header", f"{type(exc).__name__}: {exc}"[:200]))
            continue
        grouped.setdefault((header.study_uid, header.series_uid), []).append(header)

    accepted: list[DicomSeries] = []
    refused: list[RefusedSeries] = []
    for (study_uid, series_uid), headers in grouped.items():
        identity = SeriesIdentity(
            study_uid=study_uid,
            series_uid=series_uid,
            description=_first(h.description for h in headers),
            folder=_common_folder([h.path for h in headers]),
        )
        result = _check_series(identity, headers, max_volume_bytes=max_volume_bytes)
        if isinstance(result, DicomSeries):
            accepted.append(result)
        else:
            files = tuple(sorted(h.path for h in headers))
            refused.append(RefusedSeries(identity=identity, files=files, problems=tuple(result)))

    def by_place(identity: SeriesIdentity) -> tuple[str, str, str]:
        return (identity.folder, identity.study_uid, identity.series_uid)

    return SeriesGrouping(
        series=tuple(sorted(accepted, key=lambda s: by_place(s.identity))),
        refused=tuple(sorted(refused, key=lambda r: by_place(r.identity))),
        skipped=tuple(sorted(skipped, key=lambda e: e.path)),
    )


# --- reading a volume ----------------------------------------------------------------------


def read_volume(series: DicomSeries, *, max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES) -> Volume:
    """Decode a checked series into float32 (depth, rows, columns) in modality units.

    The Modality LUT or rescale slope/intercept (PS3.3 C.11.1) is applied per slice, since
    scanners may vary it slice by slice; for enhanced files it comes from each frame's
    Pixel Value Transformation Sequence (C.7.6.16.2.9).

    Raises:
        SeriesError: the volume is larger than `max_volume_bytes` (before any decoding).
        DicomReadError: a file cannot be decoded, or no longer matches its header.
    """
    if series.volume_bytes > max_volume_bytes:
        raise SeriesError(_too_large(series.identity, series.files, series.shape, max_volume_bytes))
    voxels = np.empty(series.shape, dtype=np.float32)
    slices_by_file: dict[str, list[tuple[int, SeriesSlice]]] = {}
    for depth_index, item in enumerate(series.slices):
        slices_by_file.setdefault(item.path, []).append((depth_index, item))
    for path_text, items in slices_by_file.items():
        path = Path(path_text)
        ds = read_dataset(path, stop_before_pixels=False)
        stored = decode_pixels(path, ds)  # (frames, rows, columns, samples)
        if stored.shape[1:3] != (series.rows, series.columns) or stored.shape[3] != 1:
            raise DicomReadError(
                path,
                "file changed since it was grouped",
                f"pixel data has shape {stored.shape[1:]}, the header said "
                f"({series.rows}, {series.columns}, 1); group the folder again",
            )
        for depth_index, item in items:
            frame = item.frame or 0
            if frame >= stored.shape[0]:
                raise DicomReadError(path, "file changed since it was grouped", f"no frame {frame + 1}")
            lut_ds = _modality_lut_dataset(ds, item.frame)
            try:
                values = apply_modality_lut(stored[frame, :, :, 0], lut_ds)
            except Exception as exc:  # pydicom raises many types on defective LUT values
                raise DicomReadError(path, "invalid modality LUT", f"(0028,1052)/(0028,1053): {exc}") from exc
            voxels[depth_index] = np.asarray(values, dtype=np.float32)
    if not np.isfinite(voxels).all():
        raise DicomReadError(series.files[0], "invalid pixel values", "NaN or infinite after rescale")
    middle = series.slices[series.depth // 2]
    return Volume(
        voxels=voxels,
        spacing=series.spacing,
        window=middle.window,
        photometric=series.photometric,
        series=series,
    )


def _modality_lut_dataset(ds: Dataset, frame: int | None) -> Dataset:
    """The dataset `apply_modality_lut` reads: the file's, or one frame's rescale for an enhanced file."""
    if frame is None:
        return ds
    lut_ds = Dataset()
    item = _functional_item(ds, frame, "PixelValueTransformationSequence")
    if item is not None:
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            if keyword in item:
                setattr(lut_ds, keyword, item[keyword].value)
    return lut_ds


# --- headers -------------------------------------------------------------------------------


@dataclass
class _Frame:
    """What one slice's header says, before any check."""

    path: str
    frame: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_gap: float | None  # SpacingBetweenSlices, else SliceThickness: only for a lone slice
    rows: int | None
    columns: int | None
    samples: int
    photometric: str
    patient_id: str | None
    window: tuple[float, float] | None


@dataclass
class _FileHeader:
    path: str
    study_uid: str
    series_uid: str
    description: str | None
    modality: str | None
    frames: list[_Frame]
    enhanced: bool
    frame_count: int  # NumberOfFrames, 1 for a single-frame file


def _read_file_header(path: Path) -> _FileHeader:
    """Read one file's header into per-slice facts, or raise `DicomReadError` to skip it."""
    ds = read_dataset(path, stop_before_pixels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid IS/DS values warn when read; they become None
        sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
        if sop_class in _NON_IMAGE_SOP_CLASSES:
            raise DicomReadError(path, "not an image", f"SOP Class {UID(sop_class).name}: "
                                 f"{_NON_IMAGE_SOP_CLASSES[sop_class]}")
        if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
            kind = UID(sop_class).name if sop_class else "unknown SOP class"
            raise DicomReadError(
                path, "no pixel data",
                f"{kind} without (0028,0010) Rows, (0028,0011) Columns or (0028,0100) Bits Allocated",
            )
        study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
        if not study_uid or not series_uid:
            missing = [_tag_name(k) for k, v in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid))
                       if not v]
            raise DicomReadError(
                path, "no series identity",
                f"{' and '.join(missing)} absent; files cannot be grouped into series without "
                "them: re-export the study from the PACS",
            )
        frame_count = _integer(ds, "NumberOfFrames") or 1
        enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
        if enhanced:
            frames = [_enhanced_frame(path, ds, index) for index in range(frame_count)]
        else:
            frames = [_classic_frame(path, ds)]
        return _FileHeader(
            path=str(path),
            study_uid=study_uid,
            series_uid=series_uid,
            description=_text(ds, "SeriesDescription"),
            modality=_text(ds, "Modality"),
            frames=frames,
            enhanced=enhanced,
            frame_count=frame_count,
        )


def _classic_frame(path: Path, ds: Dataset) -> _Frame:
    spacing = _numbers(ds, "PixelSpacing", 2)
    return _Frame(
        path=str(path),
        frame=None,
        position=_numbers(ds, "ImagePositionPatient", 3),
        orientation=_numbers(ds, "ImageOrientationPatient", 6),
        pixel_spacing=spacing,
        slice_gap=_positive(_numbers(ds, "SpacingBetweenSlices", 1)) or _positive(_numbers(ds, "SliceThickness", 1)),
        **_image_attributes(ds),
        window=_window(ds),
    )


def _image_attributes(ds: Dataset) -> dict[str, Any]:
    """What every frame of a file shares: its matrix, samples, photometric interpretation and patient."""
    return {
        "rows": _integer(ds, "Rows"),
        "columns": _integer(ds, "Columns"),
        "samples": _integer(ds, "SamplesPerPixel") or 1,
        "photometric": (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper(),
        "patient_id": _text(ds, "PatientID"),
    }


def _enhanced_frame(path: Path, ds: Dataset, index: int) -> _Frame:
    """One frame of an enhanced multi-frame image (PS3.3 C.7.6.16): per-frame group, else shared."""
    position = _functional_item(ds, index, "PlanePositionSequence")
    orientation = _functional_item(ds, index, "PlaneOrientationSequence")
    measures = _functional_item(ds, index, "PixelMeasuresSequence")
    voi = _functional_item(ds, index, "FrameVOILUTSequence")
    return _Frame(
        path=str(path),
        frame=index,
        position=_numbers(position, "ImagePositionPatient", 3),
        orientation=_numbers(orientation, "ImageOrientationPatient", 6),
        pixel_spacing=_numbers(measures, "PixelSpacing", 2),
        slice_gap=(_positive(_numbers(measures, "SpacingBetweenSlices", 1))
                   or _positive(_numbers(measures, "SliceThickness", 1))),
        **_image_attributes(ds),
        window=_window(voi),
    )


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of `sequence` in the frame's Per-Frame group, else in the Shared group."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


# --- checks --------------------------------------------------------------------------------


def _check_series(
    identity: SeriesIdentity, headers: list[_FileHeader], *, max_volume_bytes: int
) -> DicomSeries | list[SeriesProblem]:
    """Run the checks in three stages; a later stage needs what the earlier ones guarantee."""
    frames = [frame for header in headers for frame in header.frames]
    single = len(frames) == 1
    problems = _tag_problems(identity, headers, frames, single=single)
    if problems:
        return problems
    problems = _consistency_problems(identity, frames)
    if problems:
        return problems
    rows, columns = frames[0].rows or 0, frames[0].columns or 0
    shape = (len(frames), rows, columns)
    if shape[0] * rows * columns * VOXEL_BYTES > max_volume_bytes:
        return [_too_large(identity, tuple(h.path for h in headers), shape, max_volume_bytes)]

    if single:
        frame = frames[0]
        located = [(0.0, frame)]
        normal = None
    else:
        normal = _normal(frames[0].orientation)
        located = sorted(
            ((float(np.dot(f.position, normal)), f) for f in frames),
            key=lambda pair: (pair[0], pair[1].path, pair[1].frame or 0),
        )
        problems = _spacing_problems(identity, located, normal)
        if problems:
            return problems

    slice_spacing = (
        (frames[0].slice_gap or 1.0)  # no neighbour to measure from
        if single
        else (located[-1][0] - located[0][0]) / (len(located) - 1)
    )
    first = frames[0]
    return DicomSeries(
        identity=identity,
        modality=_first(h.modality for h in headers),
        slices=tuple(
            SeriesSlice(
                path=f.path,
                frame=f.frame,
                position=tuple(f.position) if f.position is not None else None,
                location=location,
                window=f.window,
            )
            for location, f in located
        ),
        rows=rows,
        columns=columns,
        pixel_spacing=(float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        slice_spacing=float(slice_spacing),
        orientation=tuple(first.orientation) if first.orientation is not None else None,
        photometric=first.photometric,
        enhanced=any(h.enhanced for h in headers),
    )


def _tag_problems(
    identity: SeriesIdentity, headers: list[_FileHeader], frames: list[_Frame], *, single: bool
) -> list[SeriesProblem]:
    """Tags every slice needs: geometry for ordering (not for a lone 2-D image), grayscale samples."""
    problems: list[SeriesProblem] = []
    cine = [h.path for h in headers if not h.enhanced and h.frame_count > 1]
    if cine:
        problems.append(SeriesProblem(
            identity, tuple(cine), "multi-frame without frame positions",
            f"{_listed(cine, identity)} hold(s) several frames (0028,0008) Number of Frames but no "
            "per-frame (5200,9230) functional groups with a position for each: a cine loop or "
            "NM/US acquisition, not a volume; leave it out of a volume task",
        ))
    required = ["PixelSpacing"] if single else ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]
    attribute = {"ImagePositionPatient": "position", "ImageOrientationPatient": "orientation",
                 "PixelSpacing": "pixel_spacing"}
    for keyword in required:
        lacking = _describe_frames([f for f in frames if getattr(f, attribute[keyword]) is None])
        if lacking:
            problems.append(SeriesProblem(
                identity, tuple(dict.fromkeys(p for p, _ in lacking)), f"missing {keyword}",
                f"{_tag_name(keyword)} is absent or invalid in {_listed([d for _, d in lacking], None)} "
                f"({len(lacking)} of {len(frames)} slices); slices cannot be placed without it: "
                "re-export the series from the scanner or PACS with its geometry",
            ))
    colour = _describe_frames([f for f in frames if f.samples != 1 or f.photometric not in _MONOCHROME])
    if colour:
        problems.append(SeriesProblem(
            identity, tuple(dict.fromkeys(p for p, _ in colour)), "colour slice",
            f"{_listed([d for _, d in colour], None)} (0028,0002) Samples per Pixel > 1 or (0028,0004) "
            "Photometric Interpretation not MONOCHROME1/2: volumes are grayscale; a colour "
            "slice is usually a screenshot or secondary capture: remove it from the series",
        ))
    sizes = [f for f in frames if not f.rows or not f.columns]
    if sizes:
        paths = tuple(dict.fromkeys(f.path for f in sizes))
        problems.append(SeriesProblem(
            identity, paths, "missing Rows/Columns",
            f"(0028,0010) Rows or (0028,0011) Columns is 0 or invalid in {_listed(paths, identity)}; repair the files",
        ))
    return problems


def _consistency_problems(identity: SeriesIdentity, frames: list[_Frame]) -> list[SeriesProblem]:
    """One patient, one orientation, one pixel spacing, one image size, one photometric."""
    checks: list[tuple[str, str, Callable[[_Frame], Any], Callable[[Any, Any], bool], str]] = [
        ("another patient's slice", "PatientID", lambda f: f.patient_id, lambda a, b: a == b,
         "the slice belongs to another patient's study: remove it and find where it was misfiled"),
        ("mixed orientations", "ImageOrientationPatient", lambda f: f.orientation,
         lambda a, b: _close(a, b, ORIENTATION_TOLERANCE),
         "a series must be one stack: slices of another orientation (a localizer, another "
         "plane) share this SeriesInstanceUID; remove them or re-export the series"),
        ("mixed pixel spacing", "PixelSpacing", lambda f: f.pixel_spacing,
         lambda a, b: _close(a, b, PIXEL_SPACING_TOLERANCE_MM),
         "slices of another field of view or reconstruction share this SeriesInstanceUID; "
         "remove them or re-export the series"),
        ("mixed image size", "Rows", lambda f: (f.rows, f.columns), lambda a, b: a == b,
         "slices with another (0028,0010) Rows / (0028,0011) Columns share this "
         "SeriesInstanceUID; remove them or re-export the series"),
        ("mixed photometric interpretation", "PhotometricInterpretation", lambda f: f.photometric,
         lambda a, b: a == b, "MONOCHROME1 and MONOCHROME2 slices in one series; re-export the series"),
    ]
    problems: list[SeriesProblem] = []
    for reason, keyword, value_of, same, fix in checks:
        outliers, majority_count, majority_value = _outliers(frames, value_of, same)
        if not outliers:
            continue
        described = _describe_frames(outliers)
        shown = "" if keyword == "PatientID" else (  # never print patient identifiers
            f" ({_format_value(value_of(outliers[0]))} instead of {_format_value(majority_value)})"
        )
        problems.append(SeriesProblem(
            identity, tuple(dict.fromkeys(p for p, _ in described)), reason,
            f"{_tag_name(keyword)} of {_listed([d for _, d in described], None)}{shown} differs from "
            f"the other {majority_count} slices; {fix}",
        ))
    return problems


def _spacing_problems(
    identity: SeriesIdentity, located: list[tuple[float, _Frame]], normal: np.ndarray
) -> list[SeriesProblem]:
    """Duplicates, missing slices, uneven steps and sheared (tilted) stacks, from the sorted positions."""
    locations = np.array([location for location, _ in located])
    steps = np.diff(locations)
    names = [_frame_name(f) for _, f in located]
    problems: list[SeriesProblem] = []

    duplicates = [i for i, step in enumerate(steps) if step < DUPLICATE_TOLERANCE_MM]
    if duplicates:
        pairs = [f"{names[i]} and {names[i + 1]} at {locations[i]:.3f} mm" for i in duplicates]
        files = {located[j][1].path for i in duplicates for j in (i, i + 1)}
        problems.append(SeriesProblem(
            identity, tuple(sorted(files)), "duplicate positions",
            f"{_listed(pairs, None)}: two slices share one (0020,0032) Image Position (Patient), "
            "projected on the slice normal; a file exported twice, or several stacks, echoes or "
            "time points in one series: remove the copies or split the series",
        ))
        return problems

    step = float(np.median(steps))
    tolerance = max(SPACING_RELATIVE_TOLERANCE * step, SPACING_TOLERANCE_MM)
    gaps, uneven = [], []
    for i, actual in enumerate(steps):
        if abs(actual - step) <= tolerance:
            continue
        multiple = round(actual / step)
        if multiple >= 2 and abs(actual - multiple * step) <= multiple * tolerance:
            gaps.append((i, multiple - 1))
        else:
            uneven.append(i)

    def between(i: int) -> str:
        return (f"{locations[i + 1] - locations[i]:.3f} mm between {locations[i]:.3f} mm ({names[i]}) "
                f"and {locations[i + 1]:.3f} mm ({names[i + 1]})")

    def files_of(indices: Iterable[int]) -> tuple[str, ...]:
        return tuple(sorted({located[j][1].path for i in indices for j in (i, i + 1)}))

    if gaps:
        listed = [f"{between(i)}: {missing} slice(s) missing" for i, missing in gaps]
        problems.append(SeriesProblem(
            identity, files_of(i for i, _ in gaps), "missing slice",
            f"positions along the slice normal step by {step:.3f} mm but {_listed(listed, None)}; "
            "the export is incomplete: re-send the whole series from the PACS",
        ))
    if uneven:
        problems.append(SeriesProblem(
            identity, files_of(uneven), "uneven spacing",
            f"positions along the slice normal step by {step:.3f} mm (median) but "
            f"{_listed([between(i) for i in uneven], None)}; "
            "slices of different reconstructions share this series, or the series needs "
            "resampling to even spacing before use",
        ))
    if problems:
        return problems

    positions = np.array([f.position for _, f in located])
    deltas = np.diff(positions, axis=0)
    sideways = np.linalg.norm(deltas - np.outer(deltas @ normal, normal), axis=1)
    tilted = [i for i, shift in enumerate(sideways) if shift > TILT_TOLERANCE * step + SPACING_TOLERANCE_MM]
    if tilted:
        i = tilted[0]
        problems.append(SeriesProblem(
            identity, files_of(tilted), "positions off the slice normal",
            f"from {names[i]} to {names[i + 1]} the (0020,0032) Image Position (Patient) moves "
            f"{sideways[i]:.3f} mm sideways for a {step:.3f} mm step ({len(tilted)} step(s)): a gantry-tilted or "
            "sheared stack whose voxels are not a box; correct the tilt (resample) before use",
        ))
    return problems


def _too_large(
    identity: SeriesIdentity, files: Sequence[str], shape: tuple[int, int, int], limit: int
) -> SeriesProblem:
    depth, rows, columns = shape
    size = depth * rows * columns * VOXEL_BYTES
    return SeriesProblem(
        identity, tuple(files), "volume too large",
        f"{depth} slices x {rows} (0028,0010) Rows x {columns} (0028,0011) Columns x {VOXEL_BYTES} bytes "
        f"(float32) = {size:,} bytes, over the limit of {limit:,} bytes; raise the limit if the "
        "machine has the memory, or read a smaller series",
    )


def _outliers(
    frames: list[_Frame], value_of: Callable[[_Frame], Any], same: Callable[[Any, Any], bool]
) -> tuple[list[_Frame], int, Any]:
    """Frames whose value differs from the largest group of equal values (first group on a tie)."""
    clusters: list[tuple[Any, list[_Frame]]] = []
    for frame in frames:
        value = value_of(frame)
        for representative, members in clusters:
            if (value is None and representative is None) or (
                value is not None and representative is not None and same(value, representative)
            ):
                members.append(frame)
                break
        else:
            clusters.append((value, [frame]))
    majority_value, majority = max(clusters, key=lambda cluster: len(cluster[1]))
    outliers = [f for _, members in clusters if members is not majority for f in members]
    return outliers, len(majority), majority_value


# --- small helpers -------------------------------------------------------------------------


def _normal(orientation: Sequence[float]) -> np.ndarray:
    """The slice normal: row cosines x column cosines (PS3.3 C.7.6.2.1.1)."""
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else normal


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _numbers(item: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers from a DS/FD element, or None when absent or invalid."""
    if item is None:
        return None
    try:
        value = item.get(keyword)
        if value is None or value == "":
            return None
        values = list(value) if hasattr(value, "__len__") and not isinstance(value, str) else [value]
        numbers = tuple(float(v) for v in values)
    except Exception:
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    if count == 6 and np.linalg.norm(np.cross(numbers[:3], numbers[3:])) < 0.5:
        return None  # direction cosines that are not two orthogonal unit vectors
    return numbers


def _positive(numbers: tuple[float, ...] | None) -> float | None:
    return numbers[0] if numbers and numbers[0] > 0 else None


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        text = str(value).strip() if value is not None else ""
    except Exception:
        return None
    return text or None


def _window(item: Dataset | None) -> tuple[float, float] | None:
    """The first (center, width) of a VOI window (PS3.3 C.11.2), or None when absent or invalid."""
    if item is None:
        return None
    values = []
    for keyword in ("WindowCenter", "WindowWidth"):
        try:
            value = item.get(keyword)
            if value is None or value == "":
                return None
            first = value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value
            values.append(float(first))
        except Exception:
            return None
    center, width = values
    return (center, width) if np.isfinite(center) and np.isfinite(width) and width > 0 else None


def _tag_name(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"{Tag(tag)} {dictionary_description(tag)}" if tag is not None else keyword


def _frame_name(frame: _Frame) -> str:
    name = os.path.basename(frame.path)
    return name if frame.frame is None else f"{name} frame {frame.frame + 1}"


def _describe_frames(frames: list[_Frame]) -> list[tuple[str, str]]:
    """(path, human name) of each frame; a whole multi-frame file once, not once per frame."""
    by_path: dict[str, list[_Frame]] = {}
    for frame in frames:
        by_path.setdefault(frame.path, []).append(frame)
    described = []
    for path, members in by_path.items():
        if len(members) == 1:
            described.append((path, _frame_name(members[0])))
        else:
            described.append((path, f"{os.path.basename(path)} ({len(members)} frames)"))
    return described


def _listed(names: Sequence[str], identity: SeriesIdentity | None) -> str:
    """At most a few names, then how many more; paths shown relative to the series folder."""
    shown = [os.path.relpath(n, identity.folder) if identity else n for n in names[:_MAX_LISTED]]
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)


def _first(values: Iterable[str | None]) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _common_folder(paths: list[str]) -> str:
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    try:
        return os.path.commonpath(folders)
    except ValueError:  # different drives
        return folders[0]

