"""DICOM series written with pydicom for the data tests: one file per slice, or one enhanced multi-frame file.

File names and InstanceNumbers are shuffled against the positions, and the rescale varies
slice by slice, so a reader that orders or rescales by anything but the standard's tags fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Rotated 30 degrees about x, then 20 about z: a double-oblique plane.
_ROW = np.array([np.cos(np.radians(20)), np.sin(np.radians(20)), 0.0])
_COLUMN = np.array([-np.sin(np.radians(20)), np.cos(np.radians(20)), 0.0]) * np.cos(np.radians(30)) + np.array(
    [0.0, 0.0, np.sin(np.radians(30))]
)
OBLIQUE = tuple(float(v) for v in np.concatenate([_ROW, _COLUMN]))
ROWS, COLUMNS = 6, 8
PIXEL_SPACING = (0.8, 0.7)


@dataclass
class WrittenSlice:
    path: Path
    location: float  # mm along the normal
    hu: np.ndarray  # the slice in modality units, as written


def stored_slice(index: int) -> np.ndarray:
    """Stored values unique to a slice index, so that order can be read back from the pixels."""
    ramp = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS)
    return (ramp * 10 + 100 * index + 900).astype(np.uint16)  # about -120..1700 HU after rescale


def base_dataset(sop_class: str = CT_IMAGE, **tags: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # set_pixel_data keeps it for raw data
    ds.Modality = "CT"
    ds.PatientID = "PAT-0001"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def write_series(
    folder: Path,
    *,
    count: int = 6,
    spacing: float = 2.5,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-20.0, -30.0, 40.0),
    steps: list[float] | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str | None = None,
    description: str = "AX 2.5mm",
    seed: int = 0,
    per_slice: dict[int, dict[str, object]] | None = None,
    drop: tuple[str, ...] = (),
    prefix: str = "IM",
) -> list[WrittenSlice]:
    """A CT series, one file per slice; file names and InstanceNumbers both disagree with position order.

    Slice k (in position order) lies at origin + steps[:k].sum() along the normal; `per_slice`
    overrides tags of slice k, `drop` removes tags from every slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = random.Random(seed)
    steps = steps if steps is not None else [spacing] * (count - 1)
    count = len(steps) + 1
    locations = np.concatenate([[0.0], np.cumsum(steps)])
    normal = np.cross(orientation[:3], orientation[3:])
    names = [f"{prefix}{n:04d}.dcm" for n in range(count)]
    rng.shuffle(names)
    instance_numbers = list(range(1, count + 1))
    rng.shuffle(instance_numbers)
    written = []
    for k in range(count):
        slope, intercept = (1.0, -1024.0) if k % 2 == 0 else (2.0, -2048.0)  # rescale varies per slice
        ds = base_dataset(
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SeriesDescription=description,
            InstanceNumber=instance_numbers[k],
            ImagePositionPatient=[round(float(v), 6) for v in np.array(origin) + locations[k] * normal],
            ImageOrientationPatient=[round(v, 6) for v in orientation],
            PixelSpacing=list(PIXEL_SPACING),
            SliceThickness=spacing,
            RescaleSlope=slope,
            RescaleIntercept=intercept,
            WindowCenter=[40 + k, 400],
            WindowWidth=[400, 1500],
        )
        ds.set_pixel_data(stored_slice(k), "MONOCHROME2", 12)
        for keyword, value in (per_slice or {}).get(k, {}).items():
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
        for keyword in drop:
            del ds[keyword]
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        written.append(WrittenSlice(path, float(locations[k] + np.dot(origin, normal)),
                                    stored_slice(k) * slope + intercept))
    return written


def write_enhanced_ct(path: Path, *, count: int = 6, spacing: float = 2.5, orientation=AXIAL,
                      origin=(-20.0, -30.0, 40.0), seed: int = 0) -> None:
    """The same volume as `write_series`, as one Enhanced CT file with frames in shuffled order."""
    normal = np.cross(orientation[:3], orientation[3:])
    order = list(range(count))
    random.Random(seed).shuffle(order)
    ds = base_dataset(ENHANCED_CT_IMAGE, StudyInstanceUID="1.2.826.0.1.3680043.8.498.2",
                      SeriesInstanceUID=generate_uid(), SeriesDescription="Enhanced AX")
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [round(v, 6) for v in orientation]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = list(PIXEL_SPACING)
    shared.PixelMeasuresSequence[0].SliceThickness = spacing
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = [
            round(float(v), 6) for v in np.array(origin) + k * spacing * normal
        ]
        slope, intercept = (1.0, -1024.0) if k % 2 == 0 else (2.0, -2048.0)
        frame.PixelValueTransformationSequence = Sequence([Dataset()])
        frame.PixelValueTransformationSequence[0].RescaleSlope = slope
        frame.PixelValueTransformationSequence[0].RescaleIntercept = intercept
        frame.PixelValueTransformationSequence[0].RescaleType = "HU"
        frame.FrameVOILUTSequence = Sequence([Dataset()])
        frame.FrameVOILUTSequence[0].WindowCenter = [40 + k, 400]
        frame.FrameVOILUTSequence[0].WindowWidth = [400, 1500]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.set_pixel_data(np.stack([stored_slice(k) for k in order]), "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
