"""Tiny images, series and masks for the mask tests: DICOM written with pydicom, SEG with highdicom, NIfTI with nibabel.

Every image holds a bright rectangle (or box) where its label map says 1, so a reader that
misplaces, flips or reorders a mask is caught by comparing the two.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from fedmed.data.synth import CT_IMAGE_STORAGE, DIGITAL_XRAY_STORAGE, study_dataset

DAY = dt.date(2024, 1, 8)


def image_dataset(
    *,
    rows: int = 20,
    columns: int = 24,
    spacing: tuple[float, float] = (0.5, 0.6),
    box: tuple[int, int, int, int] = (4, 10, 6, 15),  # row start, row stop, column start, column stop
    modality: str = "DX",
    series_uid: str | None = None,
    frame_of_reference: str | None = None,
    position: tuple[float, float, float] = (-10.0, -20.0, 30.0),
) -> Dataset:
    """A 12-bit image, dark with a bright box; CT images carry a frame of reference, position and orientation."""
    ds = study_dataset(
        CT_IMAGE_STORAGE if modality == "CT" else DIGITAL_XRAY_STORAGE, generate_uid(), index=0, sex="F", age=50,
        day=DAY, modality=modality, manufacturer="Test", model="T-1", institution="Test Hospital",
        patient_name="TEST^0001", patient_id="TEST-0001", accession="ACC-1",
    )
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PixelSpacing = list(spacing)
    if modality == "CT":
        ds.FrameOfReferenceUID = frame_of_reference or generate_uid()
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    pixels = np.full((rows, columns), 500, dtype=np.uint16)
    r0, r1, c0, c1 = box
    pixels[r0:r1, c0:c1] = 3500
    ds.set_pixel_data(pixels, "MONOCHROME2", 12, generate_instance_uid=False)
    return ds


def box_labels(rows: int, columns: int, box: tuple[int, int, int, int], value: int = 1) -> np.ndarray:
    labels = np.zeros((rows, columns), dtype=np.uint8)
    r0, r1, c0, c1 = box
    labels[r0:r1, c0:c1] = value
    return labels


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def description(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def segmentation(
    sources: Sequence[Dataset],
    masks: np.ndarray,
    labels: Sequence[str] = ("lesion",),
    *,
    kind: str = "BINARY",
) -> hd.seg.Segmentation:
    """A SEG of `sources`: `masks` is (frames, rows, columns) label values, or (frames, rows, columns, segments)
    stacked (binary, or probabilities for FRACTIONAL)."""
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=masks, segmentation_type=kind,
        segment_descriptions=[description(n, label) for n, label in enumerate(labels, start=1)],
        series_instance_uid=generate_uid(), series_number=100, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="fedmed tests", manufacturer_model_name="seg_files", software_versions="1",
        device_serial_number="0",
    )


def write_nifti_2d(path: Path, labels: np.ndarray, ds: Dataset, *, flip_rows: bool = False,
                   row_major: bool = False, shift_mm: float = 0.0, spacing_scale: float = 1.0,
                   dtype: type = np.uint8) -> Path:
    """A 2-D label map as dcm2niix lays it out: voxel (column, row, 0), RAS+ affine (DICOM's LPS x, y negated).

    `flip_rows` stores rows bottom-up with the affine saying so (dcm2niix's default);
    `row_major` stores voxel axes (row, column) instead, again with a matching affine.
    """
    spacing_row, spacing_column = (float(v) * spacing_scale for v in ds.PixelSpacing)
    corner = np.array([float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])])
    corner[0] += shift_mm
    data = labels.T.copy()  # (column, row)
    lps = np.zeros((3, 4))
    lps[:, 0] = [spacing_column, 0, 0]  # column index runs along +x (L)
    lps[:, 1] = [0, spacing_row, 0]  # row index along +y (P)
    lps[:, 2] = [0, 0, 2.0]
    lps[:, 3] = corner
    if flip_rows:
        data = data[:, ::-1]
        lps[:, 3] = lps[:, 3] + lps[:, 1] * (labels.shape[0] - 1)
        lps[:, 1] = -lps[:, 1]
    if row_major:
        data = data.T
        lps[:, [0, 1]] = lps[:, [1, 0]]
    affine = np.eye(4)
    affine[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ lps
    image = nib.Nifti1Image(np.ascontiguousarray(data[:, :, None]).astype(dtype), affine)
    nib.save(image, path)
    return path


def ct_series(
    folder: Path,
    *,
    slices: int = 6,
    rows: int = 12,
    columns: int = 10,
    spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    box: tuple[int, int, int, int, int, int] = (2, 4, 3, 8, 2, 6),  # slice, row, column starts and stops
    seed: int = 0,
) -> tuple[list[Dataset], np.ndarray]:
    """A CT series written in shuffled file names, slices listed feet to head (descending z), and its label box.

    Returns the datasets in position order (increasing z, as `group_series` orders them)
    and the (slices, rows, columns) label map in that order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    labels = np.zeros((slices, rows, columns), dtype=np.uint8)
    s0, s1, r0, r1, c0, c1 = box
    labels[s0:s1, r0:r1, c0:c1] = 1
    names = [f"{n:03d}.dcm" for n in range(slices)]
    random.Random(seed).shuffle(names)
    datasets = []
    for k in range(slices):
        ds = image_dataset(rows=rows, columns=columns, spacing=spacing, modality="CT", series_uid=series,
                           frame_of_reference=frame, position=(-4.0, -5.0, 10.0 + k * slice_spacing),
                           box=(0, 0, 0, 0))
        ds.StudyInstanceUID = study
        ds.InstanceNumber = slices - k
        ds.SliceThickness = slice_spacing
        pixels = np.where(labels[k] > 0, 3500, 500).astype(np.uint16) + k  # the slice index is in the pixels
        ds.set_pixel_data(pixels, "MONOCHROME2", 12, generate_instance_uid=False)
        save(ds, folder / names[k])
        datasets.append(ds)
    return datasets, labels


def without_references(seg: Dataset) -> Dataset:
    """A copy of a SEG whose frames reference no source instance (matched by position only)."""
    out = copy.deepcopy(seg)
    for group in out.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in group:
            del group.DerivationImageSequence
    if "ReferencedSeriesSequence" in out:
        del out.ReferencedSeriesSequence
    if "SourceImageSequence" in out:
        del out.SourceImageSequence
    return out


def write_nifti_3d(path: Path, labels: np.ndarray, datasets: Sequence[Dataset], *, reverse_slices: bool = False,
                   shape_override: tuple[int, ...] | None = None) -> Path:
    """A (slices, rows, columns) label map as dcm2niix writes a series: voxel (column, row, slice), RAS+ affine."""
    first = datasets[0]
    spacing_row, spacing_column = (float(v) for v in first.PixelSpacing)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    step = (positions[-1] - positions[0]) / (len(datasets) - 1)
    data = np.transpose(labels, (2, 1, 0))  # (column, row, slice)
    lps = np.zeros((3, 4))
    lps[:, 0] = [spacing_column, 0, 0]
    lps[:, 1] = [0, spacing_row, 0]
    lps[:, 2] = step
    lps[:, 3] = positions[0]
    if reverse_slices:
        data = data[:, :, ::-1]
        lps[:, 3] = positions[-1]
        lps[:, 2] = -step
    if shape_override is not None:
        data = np.zeros(shape_override, dtype=np.uint8)
    affine = np.eye(4)
    affine[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.uint8), affine), path)
    return path
