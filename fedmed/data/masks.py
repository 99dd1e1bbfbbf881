"""Read a segmentation mask on the grid of its image: a DICOM SEG or a NIfTI label map.

A segmentation site's manifest (`labels.csv`, header `file,mask,split`) pairs each image (a
DICOM file, or a series for 3-D) with a mask file relative to the site folder. The
experiment declares its structures by name (`structures: [liver, tumour]`): label value i
(1-based) is structures[i-1], 0 is background.

Why so many checks: a mask that is off by a slice, drawn on another series or another
resampling of the image, or that names a structure the model does not know, trains the
model on wrong answers without any error. Each problem is a `MaskError` (a
`DicomReadError`, so the dataset skips the row and counts its `reason`) whose detail names
the tag or value and the fix.

DICOM SEG (PS3.3 A.51, Segmentation IOD; C.8.20 Segmentation Image module) is read with
highdicom. BINARY, FRACTIONAL (a pixel belongs to a segment when its probability or
occupancy is at least `FRACTIONAL_THRESHOLD`) and LABELMAP segmentations are read.
Segments are matched to structures by Segment Label (0062,0005), stripped and
case-insensitively. Frames are matched to the image's slices by the SOP Instance UIDs
(and frame numbers) each SEG frame references (C.7.6.16.2.6, Derivation Image); a SEG
whose frames reference nothing is matched by Image Position (Patient) instead, never by
frame order. Where segments overlap, the structure later in `structures` wins (list a
container before what it contains: `[liver, tumour]`).

NIfTI (nibabel) is matched through its affine: NIfTI world space is RAS+, DICOM's is LPS+
(PS3.3 C.7.6.2.1.1), so x and y are negated; each NIfTI voxel axis is then assigned to the
image's column, row or slice direction. This reads what dcm2niix and ITK write (voxel
axes (column, row, slice), either sign) and any other axis order or flip; an oblique or
shifted grid, or another shape or spacing, is refused.

Masks are resampled exactly as their images are (`read_dicom_image`'s stretch to
size x size, `preprocess_volume`'s resize or resample-then-pad/crop), with nearest
neighbour at pixel centres (PyTorch's "nearest-exact"): output pixel i takes the input
pixel under its centre (i + 0.5) * n_in / n_out, the same geometry as the area and
bilinear (align_corners=False) resampling of the image. ("nearest" would take
floor(i * n_in / n_out), shifting masks by up to half an input pixel.)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop
from pydicom.dataset import Dataset
from pydicom.uid import UID

from fedmed.data.dicom import DicomReadError, read_dataset
from fedmed.data.logs import Diagnostics, capture_diagnostics
from fedmed.data.series import DicomSeries
from fedmed.data.volume import resampled_shape

__all__ = [
    "FRACTIONAL_THRESHOLD",
    "MASK_PREPROCESSING_VERSION",
    "MaskError",
    "capture_mask_diagnostics",
    "is_nifti_path",
    "read_label_map_image",
    "read_label_map_volume",
    "read_mask_image",
    "read_mask_volume",
    "resample_label_volume",
    "resize_label_map",
]

MASK_PREPROCESSING_VERSION = 1
"""Changes whenever a mask read at given parameters could come out differently (for cache keys)."""
FRACTIONAL_THRESHOLD = 0.5
"""A FRACTIONAL SEG pixel is in its segment at this probability or occupancy and above."""
SPACING_RELATIVE_TOLERANCE = 1e-3
AXIS_COSINE_TOLERANCE = 1e-3  # a NIfTI axis must be within ~2.6 degrees of an image axis
POSITION_TOLERANCE = 0.1  # voxels: how far a SEG frame or a NIfTI origin may lie from the image's

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
_SEG_CLASSES = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_OTHER_LOGGERS = ("highdicom", "nibabel")  # fedmed.data.logs captures pydicom's; these are captured here
_MAX_LISTED = 3


class MaskError(DicomReadError):
    """A mask that cannot be used for its image; `reason` is short and stable (for counting skipped rows)."""

    def __init__(self, path: Path | str, reason: str, detail: str | None = None) -> None:
        super().__init__(path, reason, detail)
        message = f"Cannot use mask {self.path}: {reason}"
        if detail:
            message += f" ({detail})"
        self.args = (message,)


def is_nifti_path(path: Path | str) -> bool:
    """True for a .nii or .nii.gz name; anything else is read as DICOM."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


# --- public readers ------------------------------------------------------------------------


def read_mask_image(mask_path: Path, image_path: Path, *, structures: Sequence[str], size: int) -> np.ndarray:
    """The uint8 (size, size) label map of a 2-D image, resampled as `read_dicom_image(image_path, size=size)`.

    A multi-frame image is read at its middle frame, as the image reader does.

    Raises:
        MaskError: the mask cannot be read, does not belong to the image, or names
            structures not declared (the message says which tag or value, and the fix).
        DicomReadError: the image's header cannot be read.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    return resize_label_map(read_label_map_image(mask_path, image_path, structures=structures), size)


def read_mask_volume(
    mask_path: Path,
    series: DicomSeries,
    *,
    structures: Sequence[str],
    target_shape: Sequence[int] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """The uint8 (D, H, W) label map of a series, with `preprocess_volume`'s geometry for the same arguments.

    Raises:
        MaskError: as for `read_mask_image`; mask slices are matched to the series' slices
            by the instances they reference, or their positions, never by file order.
        DicomReadError: a slice's header cannot be read.
    """
    labels = read_label_map_volume(mask_path, series, structures=structures)
    return resample_label_volume(labels, spacing=series.spacing, target_shape=target_shape,
                                 target_spacing=target_spacing)


def read_label_map_image(mask_path: Path, image_path: Path, *, structures: Sequence[str]) -> np.ndarray:
    """The uint8 (rows, columns) label map of a 2-D image at the image's own matrix (not resampled)."""
    declared = _declared(structures)
    image_path = Path(image_path)
    ds = read_dataset(image_path, stop_before_pixels=True)
    target = _image_target(image_path, ds)
    return _read_labels(Path(mask_path), target, declared)[0]


def read_label_map_volume(mask_path: Path, series: DicomSeries, *, structures: Sequence[str]) -> np.ndarray:
    """The uint8 (depth, rows, columns) label map of a series, slices in the series' order (not resampled)."""
    declared = _declared(structures)
    return _read_labels(Path(mask_path), _series_target(series), declared)


def resize_label_map(labels: np.ndarray, size: int) -> np.ndarray:
    """Stretch a (rows, columns) label map to (size, size), nearest neighbour at pixel centres.

    The grid matches `fedmed.data.dicom`'s image resize (area when shrinking, bilinear with
    align_corners=False when enlarging): both place output pixel i's centre at input
    coordinate (i + 0.5) * n_in / size.
    """
    if labels.shape == (size, size):
        return np.ascontiguousarray(labels, dtype=np.uint8)
    return _nearest(labels, (size, size))


def resample_label_volume(
    labels: np.ndarray,
    *,
    spacing: Sequence[float],
    target_shape: Sequence[int] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """`preprocess_volume`'s geometry for a (D, H, W) label map: resize, or resample then centre pad (0) / crop."""
    if target_spacing is not None:
        labels = _nearest(labels, resampled_shape(labels.shape, spacing, target_spacing))
    elif target_shape is not None:
        labels = _nearest(labels, tuple(int(v) for v in target_shape))
    if target_spacing is not None and target_shape is not None:
        padded = ResizeWithPadOrCrop(spatial_size=tuple(int(v) for v in target_shape))(torch.from_numpy(labels[None]))
        labels = _as_numpy(padded)[0]
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(labels.shape) == tuple(shape):
        return np.ascontiguousarray(labels, dtype=np.uint8)
    resize = Resize(spatial_size=shape, mode="nearest-exact")
    out = resize(torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None])
    return np.rint(_as_numpy(out)[0]).astype(np.uint8)


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)
    return tensor.numpy()


def _declared(structures: Sequence[str]) -> tuple[str, ...]:
    """Structure names, stripped; a bad list is the caller's (the config's) error, not the data's."""
    if isinstance(structures, str):
        raise ValueError(f"structures must be a list of names, got the string '{structures}'")
    names = tuple(str(name).strip() for name in structures)
    if not names or not all(names):
        raise ValueError(f"structures must name at least one structure, got {list(structures)}")
    if len({structure_key(name) for name in names}) != len(names):
        raise ValueError(f"structures must differ (compared as structure_key does), got {list(names)}")
    if len(names) > 255:
        raise ValueError(f"at most 255 structures fit a uint8 label map, got {len(names)}")
    return names


# --- what a mask must match ----------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The image (or series) a mask must lie on: grid, identity and slices in the image's order."""

    name: str  # for messages
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slice_spacing: float | None
    orientation: tuple[float, ...] | None  # ImageOrientationPatient
    positions: tuple[tuple[float, float, float] | None, ...]  # per slice
    frame_of_reference: str | None
    series_uid: str | None
    instances: tuple[tuple[str, int | None], ...]  # per slice: SOP Instance UID, 1-based frame or None

    @property
    def depth(self) -> int:
        return len(self.instances)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, self.rows, self.columns)


def _image_target(path: Path, ds: Dataset) -> _Target:
    frames = _integer(ds, "NumberOfFrames") or 1
    spacing = _numbers(ds, "PixelSpacing", 2) or _numbers(ds, "ImagerPixelSpacing", 2)
    orientation = _numbers(ds, "ImageOrientationPatient", 6)
    position = _numbers(ds, "ImagePositionPatient", 3)
    if frames > 1:  # an enhanced image keeps its geometry per frame: match by reference only
        orientation = position = None
    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    if not rows or not columns:
        raise DicomReadError(path, "missing image attributes", "no (0028,0010) Rows or (0028,0011) Columns")
    return _Target(
        name=f"image {path}",
        rows=rows,
        columns=columns,
        pixel_spacing=tuple(spacing) if spacing else None,
        slice_spacing=(_positive(_numbers(ds, "SpacingBetweenSlices", 1))
                       or _positive(_numbers(ds, "SliceThickness", 1))),
        orientation=tuple(orientation) if orientation else None,
        positions=(tuple(position) if position else None,),
        frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        instances=((_text(ds, "SOPInstanceUID") or "", frames // 2 + 1 if frames > 1 else None),),
    )


def _series_target(series: DicomSeries) -> _Target:
    """The series' slices with their SOP Instance UIDs (read from each file's header)."""
    headers: dict[str, Dataset] = {}
    for name in series.files:
        headers[name] = read_dataset(Path(name), stop_before_pixels=True)
    first = headers[series.slices[0].path]
    instances = []
    for item in series.slices:
        uid = _text(headers[item.path], "SOPInstanceUID")
        if not uid:
            raise DicomReadError(item.path, "missing image attributes", "no (0008,0018) SOP Instance UID")
        instances.append((uid, None if item.frame is None else item.frame + 1))
    return _Target(
        name=str(series.identity),
        rows=series.rows,
        columns=series.columns,
        pixel_spacing=series.pixel_spacing,
        slice_spacing=series.slice_spacing,
        orientation=series.orientation,
        positions=tuple(item.position for item in series.slices),
        frame_of_reference=_text(first, "FrameOfReferenceUID"),
        series_uid=series.identity.series_uid,
        instances=tuple(instances),
    )


def _read_labels(mask_path: Path, target: _Target, structures: tuple[str, ...]) -> np.ndarray:
    """(depth, rows, columns) uint8 on the target's grid, from a SEG or a NIfTI file."""
    if not mask_path.is_file():
        raise MaskError(mask_path, "mask not found", "no such file; check the mask column of labels.csv")
    with capture_mask_diagnostics(mask_path) as diagnostics:
        if is_nifti_path(mask_path):
            return _read_nifti(mask_path, target, structures, diagnostics)
        return _read_seg(mask_path, target, structures, diagnostics)


# --- DICOM SEG -----------------------------------------------------------------------------


def _read_seg(path: Path, target: _Target, structures: tuple[str, ...], diagnostics: Diagnostics) -> np.ndarray:
    try:
        ds = read_dataset(path, stop_before_pixels=False)
    except DicomReadError as exc:
        raise MaskError(path, "unreadable mask", f"{exc.reason}" + (f": {exc.detail}" if exc.detail else "")) from exc
    sop_class = _text(ds, "SOPClassUID") or ""
    if sop_class not in _SEG_CLASSES:
        kind = UID(sop_class).name if sop_class else "no SOP class"
        raise MaskError(
            path, "not a segmentation",
            f"(0008,0016) SOP Class UID is {kind}; the mask column must name a DICOM SEG "
            f"(Segmentation Storage {SEGMENTATION_STORAGE}) or a NIfTI file (.nii, .nii.gz)",
        )
    _check_seg_series(path, ds, target)  # first: a SEG of another series differs in everything else too
    _check_seg_geometry(path, ds, target)
    segments = _segment_values(path, ds, structures)
    frames = _integer(ds, "NumberOfFrames") or 0
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) or frames < 1:
        raise MaskError(path, "empty segmentation", "no frames or no (7FE0,0010) Pixel Data; export the SEG again")
    _check_spatial_locations(path, ds)
    seg = _highdicom_segmentation(path, ds, diagnostics)
    try:
        if _has_frame_references(ds):
            stacked = _pixels_by_reference(path, seg, ds, target, list(segments))
        else:
            stacked = _pixels_by_position(path, seg, ds, target, list(segments))
    except MaskError:
        raise
    except Exception as exc:  # highdicom raises many types on defective SEGs
        raise MaskError(path, "invalid segmentation", _explained(exc, diagnostics)) from exc
    return _combine(stacked, list(segments.values()), fractional=_seg_type(ds) == "FRACTIONAL")


def _check_seg_geometry(path: Path, ds: Dataset, target: _Target) -> None:
    """Rows, Columns, Pixel Spacing and Frame of Reference must be the image's (PS3.3 C.8.20.2, C.7.6.16.2.1)."""
    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    if (rows, columns) != (target.rows, target.columns):
        raise MaskError(
            path, "mask size differs from image",
            f"SEG (0028,0010) Rows x (0028,0011) Columns is {rows} x {columns}, the {target.name} is "
            f"{target.rows} x {target.columns}; the SEG must be drawn on this image's own matrix, "
            "not on a resampled copy",
        )
    spacing = _seg_pixel_spacing(ds)
    if spacing is not None and target.pixel_spacing is not None and not _close(spacing, target.pixel_spacing):
        raise MaskError(
            path, "mask pixel spacing differs from image",
            f"SEG (0028,9110) Pixel Measures (0028,0030) Pixel Spacing is {_mm(spacing)}, the image's is "
            f"{_mm(target.pixel_spacing)}; the SEG belongs to another reconstruction of the image",
        )
    frame_of_reference = _text(ds, "FrameOfReferenceUID")
    if frame_of_reference and target.frame_of_reference and frame_of_reference != target.frame_of_reference:
        raise MaskError(
            path, "mask frame of reference differs from image",
            f"SEG (0020,0052) Frame of Reference UID is {frame_of_reference}, the image's is "
            f"{target.frame_of_reference}; the SEG was drawn in another patient coordinate system "
            "(another acquisition): pair it with the image it was drawn on",
        )


def _check_seg_series(path: Path, ds: Dataset, target: _Target) -> None:
    """The SEG must reference the image's series and, among its instances, only the image's (PS3.3 C.12.2)."""
    referenced_series = [_text(item, "SeriesInstanceUID") for item in ds.get("ReferencedSeriesSequence", [])]
    referenced_series = [uid for uid in referenced_series if uid]
    if referenced_series and target.series_uid and target.series_uid not in referenced_series:
        raise MaskError(
            path, "mask of another series",
            f"SEG (0008,1115) Referenced Series Sequence names Series Instance UID "
            f"{_listed(referenced_series)}, the image's (0020,000E) is {target.series_uid}; "
            "pair the image with the SEG drawn on its series",
        )
    referenced = _referenced_instances(ds)
    own = {uid for uid, _ in target.instances}
    if target.depth == 1:  # one image: a SEG of several images of its series may reference the others too
        if referenced and not own & referenced:
            raise MaskError(
                path, "mask does not reference the image",
                f"the SEG's frames and (0008,1115) Referenced Series Sequence reference SOP Instance UID(s) "
                f"{_listed(sorted(referenced))}, not the image's (0008,0018) {target.instances[0][0]}; "
                "pair the image with its own SEG",
            )
        return
    foreign = sorted(referenced - own)
    if foreign:
        raise MaskError(
            path, "mask references instances not in the series",
            f"{len(foreign)} SOP Instance UID(s) the SEG references are not slices of the {target.name} "
            f"({_listed(foreign)}); the series has lost slices or the SEG was drawn on another "
            "version of it: export both again",
        )


def structure_key(name: str) -> str:
    """A name as structures are matched: case-folded, each run of spaces and punctuation one '_'.

    Segment Label (0062,0005) is free text (LO): "Left Lung" or "first segment" in a SEG
    written elsewhere is the structure a config names ``left_lung`` or ``first_segment``.
    """
    return re.sub(r"[^0-9a-z]+", "_", name.strip().casefold()).strip("_")


def _segment_values(path: Path, ds: Dataset, structures: tuple[str, ...]) -> dict[int, int]:
    """Segment Number (0062,0004) -> label value, by Segment Label (0062,0005) as ``structure_key`` reads it."""
    values = {structure_key(name): index for index, name in enumerate(structures, start=1)}
    segments: dict[int, int] = {}
    items = ds.get("SegmentSequence") or []
    if not items:
        raise MaskError(path, "empty segmentation",
                        "no (0062,0002) Segment Sequence items; the SEG describes no segment")
    for item in items:
        number = _integer(item, "SegmentNumber")
        label = _text(item, "SegmentLabel") or ""
        if number is None:
            raise MaskError(path, "invalid segmentation", "a (0062,0002) Segment Sequence item has no (0062,0004) "
                                                          "Segment Number")
        if number == 0:  # a LABELMAP SEG may describe its background as segment 0: value 0 is background anyway
            continue
        value = values.get(structure_key(label))
        if value is None:
            raise MaskError(
                path, "undeclared structure in mask",
                f"segment {number} (0062,0005) Segment Label '{label}' is not among the declared structures "
                f"[{', '.join(structures)}] (labels are compared lower-case, spaces and punctuation as '_'); add it "
                "to `structures` in the experiment config, or remove the "
                "segment from the SEG",
            )
        segments[number] = value
    return dict(sorted(segments.items(), key=lambda pair: (pair[1], pair[0])))


def _check_spatial_locations(path: Path, ds: Dataset) -> None:
    """A frame derived with (0028,135A) Spatial Locations Preserved NO does not lie on the image's grid."""
    for item in _source_items(ds):
        preserved = (_text(item, "SpatialLocationsPreserved") or "").upper()
        if preserved in ("NO", "REORIENTED_ONLY"):
            raise MaskError(
                path, "mask grid differs from image",
                f"a SEG frame's (0028,135A) Spatial Locations Preserved is {preserved}: its pixels do not lie on "
                "the image's pixels; export the SEG on the image's own grid",
            )


def _highdicom_segmentation(path: Path, ds: Dataset, diagnostics: Diagnostics) -> hd.seg.Segmentation:
    """The dataset as a highdicom Segmentation.

    highdicom's reader requires (0018,0050) Slice Thickness in every Pixel Measures item,
    which the standard requires only with a Frame of Reference (PS3.3 C.7.6.16.2.1, CP 1426):
    a 2-D SEG of an X-ray has none. A placeholder goes into this in-memory copy only; the
    thickness is used nowhere here.
    """
    groups = list(ds.get("SharedFunctionalGroupsSequence") or []) + list(ds.get("PerFrameFunctionalGroupsSequence")
                                                                          or [])
    for group in groups:
        for item in group.get("PixelMeasuresSequence") or []:
            if "PixelSpacing" in item and "SliceThickness" not in item:
                item.SliceThickness = 1.0
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:
        raise MaskError(path, "invalid segmentation", _explained(exc, diagnostics)) from exc


def _pixels_by_reference(
    path: Path, seg: hd.seg.Segmentation, ds: Dataset, target: _Target, numbers: list[int]
) -> np.ndarray:
    """(depth, rows, columns, segments) by the source instances (and frames) each SEG frame references."""
    options = dict(
        segment_numbers=numbers, combine_segments=False, ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True, skip_overlap_checks=True, rescale_fractional=True,
    )
    referenced = _referenced_instances(ds)
    if not any(uid in referenced for uid, _ in target.instances):
        raise MaskError(path, "mask does not reference the image",
                        f"no SEG frame references the {target.name}; pair the image with its own SEG")
    out = np.zeros((target.depth, target.rows, target.columns, len(numbers)), dtype=np.float32)
    classic = [(index, uid) for index, (uid, frame) in enumerate(target.instances) if frame is None]
    if classic:
        pixels = seg.get_pixels_by_source_instance([uid for _, uid in classic], **options)
        out[[index for index, _ in classic]] = pixels
    by_file: dict[str, list[tuple[int, int]]] = {}
    for index, (uid, frame) in enumerate(target.instances):
        if frame is not None:
            by_file.setdefault(uid, []).append((index, frame))
    for uid, items in by_file.items():
        pixels = seg.get_pixels_by_source_frame(uid, source_frame_numbers=[f for _, f in items], **options)
        out[[index for index, _ in items]] = pixels
    return out


def _pixels_by_position(
    path: Path, seg: hd.seg.Segmentation, ds: Dataset, target: _Target, numbers: list[int]
) -> np.ndarray:
    """(depth, rows, columns, segments) for a SEG whose frames reference no instance: by Image Position.

    Each frame's Plane Position (0020,9113) must lie on one of the image's slices, in the
    image's orientation (PS3.3 C.7.6.16.2.3-4); its segment is its Segment Identification
    (0062,000A), or, for a LABELMAP, the stored values themselves.
    """
    if target.orientation is None or any(p is None for p in target.positions):
        raise MaskError(
            path, "mask does not reference the image",
            f"the SEG's frames reference no source instance (no (0008,9124) Derivation Image Sequence) and the "
            f"{target.name} has no (0020,0032)/(0020,0037) position and orientation to match them by; "
            "export the SEG with references to its source images",
        )
    orientation = _seg_orientation(ds)
    if orientation is not None and not np.allclose(orientation, target.orientation, atol=AXIS_COSINE_TOLERANCE):
        raise MaskError(
            path, "mask grid differs from image",
            f"SEG (0020,9116) Plane Orientation is {_mm(orientation, unit='')}, the image's (0020,0037) is "
            f"{_mm(target.orientation, unit='')}; export the SEG in the image's orientation",
        )
    rows_axis = np.array(target.orientation[3:])
    columns_axis = np.array(target.orientation[:3])
    spacing = target.pixel_spacing or (1.0, 1.0)
    positions = [np.array(p) for p in target.positions]
    labelmap = _seg_type(ds) == "LABELMAP"
    maximum = float(ds.get("MaximumFractionalValue", 1) or 1) if _seg_type(ds) == "FRACTIONAL" else 1.0
    out = np.zeros((target.depth, target.rows, target.columns, len(numbers)), dtype=np.float32)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for frame in range(1, (_integer(ds, "NumberOfFrames") or 1) + 1):
        group = per_frame[frame - 1] if frame - 1 < len(per_frame) else Dataset()
        position = _functional_numbers(ds, group, "PlanePositionSequence", "ImagePositionPatient", 3)
        if position is None:
            raise MaskError(path, "mask does not reference the image",
                            f"SEG frame {frame} has neither source references nor a (0020,9113) Plane Position")
        offsets = [np.array(position) - p for p in positions]
        index = int(np.argmin([np.linalg.norm(o) for o in offsets]))
        offset = offsets[index]
        in_plane = (abs(offset @ rows_axis) / spacing[0], abs(offset @ columns_axis) / spacing[1])
        normal = abs(offset @ np.cross(columns_axis, rows_axis)) / (target.slice_spacing or 1.0)
        if max(*in_plane, normal) > POSITION_TOLERANCE:
            raise MaskError(
                path, "mask grid differs from image",
                f"SEG frame {frame} lies at (0020,0032) {_mm(position)}, on no slice of the {target.name} "
                f"(nearest: {_mm(positions[index])}); export the SEG on the image's own slices",
            )
        stored = np.asarray(seg.get_stored_frame(frame), dtype=np.float32)
        if labelmap:
            for column, number in enumerate(numbers):
                out[index, :, :, column] = np.maximum(out[index, :, :, column], stored == number)
            continue
        segment = _functional_integer(ds, group, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if segment in numbers:
            column = numbers.index(segment)
            out[index, :, :, column] = np.maximum(out[index, :, :, column], stored / maximum)
    return out


def _combine(stacked: np.ndarray, values: list[int], *, fractional: bool) -> np.ndarray:
    """One label per pixel; segments come sorted by label value, so the later structure wins an overlap."""
    inside = stacked >= FRACTIONAL_THRESHOLD if fractional else stacked > 0
    labels = np.zeros(stacked.shape[:3], dtype=np.uint8)
    for column, value in enumerate(values):
        labels[inside[..., column]] = value
    return labels


def _seg_type(ds: Dataset) -> str:
    return (_text(ds, "SegmentationType") or "").upper()


def _seg_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    spacing = _functional_numbers(ds, per_frame[0] if per_frame else Dataset(), "PixelMeasuresSequence",
                                  "PixelSpacing", 2)
    return (spacing[0], spacing[1]) if spacing else None


def _seg_orientation(ds: Dataset) -> tuple[float, ...] | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    return _functional_numbers(ds, per_frame[0] if per_frame else Dataset(), "PlaneOrientationSequence",
                               "ImageOrientationPatient", 6)


def _functional_item(ds: Dataset, group: Dataset, sequence: str) -> Dataset | None:
    """The item of `sequence` in a frame's functional group, else in the shared group (PS3.3 C.7.6.16)."""
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for candidate in (group, shared[0] if shared else Dataset()):
        items = candidate.get(sequence)
        if items:
            return items[0]
    return None


def _functional_numbers(
    ds: Dataset, group: Dataset, sequence: str, keyword: str, count: int
) -> tuple[float, ...] | None:
    item = _functional_item(ds, group, sequence)
    return _numbers(item, keyword, count) if item is not None else None


def _functional_integer(ds: Dataset, group: Dataset, sequence: str, keyword: str) -> int | None:
    item = _functional_item(ds, group, sequence)
    return _integer(item, keyword) if item is not None else None


def _source_items(ds: Dataset) -> Iterator[Dataset]:
    """Every Source Image Sequence item of every frame's Derivation Image Sequence (PS3.3 C.7.6.16.2.6)."""
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in list(ds.get("PerFrameFunctionalGroupsSequence") or []) + list(shared):
        for derivation in group.get("DerivationImageSequence") or []:
            yield from derivation.get("SourceImageSequence") or []


def _has_frame_references(ds: Dataset) -> bool:
    return any(_text(item, "ReferencedSOPInstanceUID") for item in _source_items(ds))


def _referenced_instances(ds: Dataset) -> set[str]:
    """SOP Instance UIDs the SEG references: per frame, and in its Referenced Series Sequence (C.12.2)."""
    uids = {_text(item, "ReferencedSOPInstanceUID") for item in _source_items(ds)}
    for series in ds.get("ReferencedSeriesSequence") or []:
        for item in series.get("ReferencedInstanceSequence") or []:
            uids.add(_text(item, "ReferencedSOPInstanceUID"))
    uids.discard(None)
    return {uid for uid in uids if uid}


# --- NIfTI ---------------------------------------------------------------------------------

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _read_nifti(path: Path, target: _Target, structures: tuple[str, ...], diagnostics: Diagnostics) -> np.ndarray:
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
        coded = image.header.get("sform_code", 0) or image.header.get("qform_code", 0)
    except Exception as exc:  # nibabel raises many types on defective files
        raise MaskError(path, "unreadable mask", _explained(exc, diagnostics)) from exc
    if not int(coded):
        raise MaskError(
            path, "NIfTI without orientation",
            "sform_code and qform_code are both 0: the file does not say where its voxels lie; write it with "
            "the image's affine (dcm2niix does; nibabel: Nifti1Image(data, affine))",
        )
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise MaskError(path, "mask size differs from image",
                        f"NIfTI data has shape {data.shape}; a label map has 2 or 3 dimensions")
    data = _checked_values(path, data, structures)
    permutation, flips = _nifti_axes(path, affine, target)
    labels = np.transpose(data, permutation)  # to (slice, row, column)
    for axis in range(3):
        if flips[axis]:
            labels = np.flip(labels, axis)
    if labels.shape != target.shape:
        raise MaskError(
            path, "mask size differs from image",
            f"NIfTI shape {tuple(data.shape)} is (slices, rows, columns) {tuple(labels.shape)} in the image's "
            f"axes, the {target.name} is {target.shape}; the mask must be drawn on this image, not a resampled copy",
        )
    _check_nifti_origin(path, affine, permutation, flips, data.shape, target)
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _checked_values(path: Path, data: np.ndarray, structures: tuple[str, ...]) -> np.ndarray:
    if data.dtype.kind not in "iufb":
        raise MaskError(path, "mask values outside the declared structures", f"NIfTI data type {data.dtype}")
    values = np.asarray(data)
    integral = values.dtype.kind != "f" or (np.isfinite(values).all() and np.array_equal(values, np.round(values)))
    if not integral:
        raise MaskError(
            path, "mask values outside the declared structures",
            "the NIfTI holds non-integer values (a probability map?); a label map holds 0 (background) or "
            f"1..{len(structures)} ({', '.join(structures)}); threshold it first",
        )
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > len(structures):
        found = sorted(int(v) for v in np.unique(values) if v < 0 or v > len(structures))
        raise MaskError(
            path, "mask values outside the declared structures",
            f"NIfTI label value(s) {found[:_MAX_LISTED]}{' ...' if len(found) > _MAX_LISTED else ''} but "
            f"structures declare 1..{len(structures)} ({', '.join(structures)}); add the missing structures "
            "to `structures` in the experiment config, in label order",
        )
    return values.astype(np.uint8)


def _image_axes(target: _Target) -> tuple[np.ndarray, tuple[float | None, float | None, float | None]]:
    """Unit vectors (LPS) of the (slice, row, column) index directions, and their spacings.

    Without Image Orientation (Patient) (a projection X-ray) the image is taken as axial,
    rows along +y (posterior) and columns along +x (left), as dcm2niix does.
    """
    orientation = target.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    columns_axis = np.array(orientation[:3], dtype=np.float64)  # direction of increasing column index
    rows_axis = np.array(orientation[3:], dtype=np.float64)  # of increasing row index
    normal = np.cross(columns_axis, rows_axis)
    spacing = target.pixel_spacing or (None, None)
    slice_spacing = target.slice_spacing if target.depth > 1 else None  # one slice: no spacing to compare
    return np.stack([normal, rows_axis, columns_axis]), (slice_spacing, spacing[0], spacing[1])


def _nifti_axes(path: Path, affine: np.ndarray, target: _Target) -> tuple[tuple[int, int, int], tuple[bool, ...]]:
    """Which NIfTI voxel axis runs along the image's slice, row and column directions, and whether reversed."""
    directions, spacings = _image_axes(target)
    lps = _RAS_TO_LPS @ affine[:3, :3]
    norms = np.linalg.norm(lps, axis=0)
    if not np.all(norms > 0):
        raise MaskError(path, "mask grid differs from image", f"NIfTI affine has a zero column: {affine[:3, :3]}")
    cosines = directions @ (lps / norms)  # [image axis, nifti axis]
    permutation = tuple(int(np.argmax(np.abs(cosines[axis]))) for axis in range(3))
    aligned = all(abs(abs(cosines[axis, permutation[axis]]) - 1.0) <= AXIS_COSINE_TOLERANCE for axis in range(3))
    if len(set(permutation)) != 3 or not aligned:
        raise MaskError(
            path, "mask grid differs from image",
            f"the NIfTI voxel axes (affine {np.round(affine[:3, :3], 4).tolist()}, RAS) are not along the image's "
            f"column, row and slice directions ({np.round(directions[::-1], 4).tolist()}, LPS); resample the mask "
            "onto the image grid first (e.g. with the image as reference), or export it with dcm2niix",
        )
    names = ("slice", "row", "column")
    for axis in range(3):
        expected, actual = spacings[axis], float(norms[permutation[axis]])
        if expected is not None and not _close((actual,), (expected,)):
            raise MaskError(
                path, "mask pixel spacing differs from image",
                f"NIfTI voxel axis {permutation[axis]} (the image's {names[axis]} direction) has spacing "
                f"{actual:g} mm (affine column norm), the image's is {expected:g} mm; the mask belongs to "
                "another resampling of the image",
            )
    flips = tuple(bool(cosines[axis, permutation[axis]] < 0) for axis in range(3))
    return permutation, flips


def _check_nifti_origin(
    path: Path, affine: np.ndarray, permutation: tuple[int, int, int], flips: tuple[bool, ...],
    shape: tuple[int, ...], target: _Target,
) -> None:
    """The NIfTI voxel landing on the image's first pixel must lie at the image's Image Position (Patient)."""
    first = target.positions[0]
    if first is None:  # a projection X-ray has no position: the axes and shape are all there is to check
        return
    index = np.zeros(3)
    for axis in range(3):
        if flips[axis]:
            index[permutation[axis]] = shape[permutation[axis]] - 1
    world = _RAS_TO_LPS @ (affine[:3, :3] @ index + affine[:3, 3])
    directions, spacings = _image_axes(target)
    offset = directions @ (world - np.array(first))
    steps = [s or target.slice_spacing or 1.0 for s in spacings]
    if np.max(np.abs(offset) / np.array(steps)) > POSITION_TOLERANCE:
        raise MaskError(
            path, "mask grid differs from image",
            f"the NIfTI voxel on the image's first pixel lies at {_mm(tuple(world))} (LPS), the image's "
            f"(0020,0032) Image Position (Patient) is {_mm(first)}; the mask is shifted or belongs to another "
            "image: export it from this image (dcm2niix keeps the origin)",
        )


# --- library logs --------------------------------------------------------------------------

_local = threading.local()
_lock = threading.Lock()
_users = 0
_saved_propagate: dict[str, bool] = {}


class _Router(logging.Handler):
    """Sends highdicom's and nibabel's records to the thread's innermost capture, else on to the root logger."""

    def emit(self, record: logging.LogRecord) -> None:
        stack = _local.__dict__.get("stack")
        if stack:
            stack[-1].add(f"{record.name}: {record.getMessage()}")
        elif _saved_propagate.get(record.name.split(".")[0], True):
            logging.getLogger().handle(record)


_router = _Router(level=logging.NOTSET)


@contextmanager
def capture_mask_diagnostics(source: object) -> Iterator[Diagnostics]:
    """`capture_diagnostics`, plus highdicom's and nibabel's loggers (highdicom logs INFO lines for every SEG
    it writes or reads); for readers here and writers of SEG files."""
    global _users
    with capture_diagnostics(source) as diagnostics:
        with _lock:
            if _users == 0:
                for name in _OTHER_LOGGERS:
                    logger = logging.getLogger(name)
                    _saved_propagate[name] = logger.propagate
                    logger.addHandler(_router)
                    logger.propagate = False
            _users += 1
        stack: list[Diagnostics] = _local.__dict__.setdefault("stack", [])
        stack.append(diagnostics)
        try:
            yield diagnostics
        finally:
            stack.pop()
            with _lock:
                _users -= 1
                if _users == 0:
                    for name in _OTHER_LOGGERS:
                        logger = logging.getLogger(name)
                        logger.removeHandler(_router)
                        logger.propagate = _saved_propagate.pop(name, True)



# --- small helpers -------------------------------------------------------------------------


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _integer(ds: Dataset | None, keyword: str) -> int | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _numbers(ds: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if count > 1 else [value])]
    except Exception:
        return None
    return tuple(values) if len(values) == count and all(np.isfinite(values)) else None


def _positive(values: tuple[float, ...] | None) -> float | None:
    return values[0] if values and values[0] > 0 else None


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= SPACING_RELATIVE_TOLERANCE * max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def _mm(values: Sequence[float], unit: str = " mm") -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]" + unit


def _listed(values: Sequence[str]) -> str:
    shown = ", ".join(values[:_MAX_LISTED])
    return shown + (f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else "")


def _explained(exc: BaseException, diagnostics: Diagnostics) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= 200 else text[:197] + "..."
    said = diagnostics.summary(besides=text)
    return text + (f" [logged: {said}]" if said else "")
