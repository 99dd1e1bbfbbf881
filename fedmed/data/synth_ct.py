"""Synthetic CT hospitals: chest CT series, one DICOM file per slice, for a 3-D "nodule present" task.

Why: the series reader must meet what a PACS export looks like, not a tidy stack. Each study
is a folder of single-slice CT Image Storage files named by their SOPInstanceUID (so file
names are in random order), and one site numbers its instances against the direction of the
positions; only ImagePositionPatient orders the slices.

A study is an axial chest CT in Hounsfield units: air, a body ellipse of soft tissue, two
lungs, a spine, smooth low-frequency variation and pixel noise. A label-1 study has one
spherical lesion (a large nodule, 24-36 mm in radius) inside a lung. Sites differ the way CT
scanners do (`CT_SITE_PROFILES`): vendor tags, matrix, field of view, slice spacing, rescale
slope/intercept, noise, windows and head-first or feet-first table direction.

Planted bias (on purpose, for the subgroup analyses to find): at site-b, nodules in female
patients are smaller and fainter (`FEMALE_NODULE_SCALE`), so that subgroup is harder there.

`labels.csv` names series, not files: site-a and site-b by their folder, site-c by its
SeriesInstanceUID. Everything is a function of `seed`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fedmed.data.synth import (
    BIASED_SITE,
    CT_IMAGE_STORAGE,
    check_site_dir,
    draw_labels,
    draw_test_split,
    low_frequency,
    site_names,
    soft_step,
    study_dataset,
)
from fedmed.errors import FedmedError

__all__ = ["CT_SITE_PROFILES", "FEMALE_NODULE_SCALE", "CtSiteProfile", "synthesize_ct_hospitals"]

FEMALE_NODULE_SCALE = (0.55, 0.7)  # site-b, female: nodule radius and contrast times this, uniform

_NODULE_RADIUS_MM = (24.0, 36.0)
_NODULE_HU = 420.0  # above lung parenchyma, before the site's contrast factor
_STUDY_DAY0 = dt.date(2024, 3, 4)


@dataclass(frozen=True)
class CtSiteProfile:
    """One hospital's CT scanner; stored = (HU - intercept) / slope, 12 bits."""

    manufacturer: str
    model: str
    size_scale: float  # Rows = Columns = round(image_size * size_scale)
    field_of_view_mm: float
    slice_spacing_mm: float
    feet_first: bool  # PatientPosition FFS instead of HFS
    instance_numbers_reversed: bool
    rescale_slope: float
    rescale_intercept: float
    windows: tuple[tuple[float, float], ...]
    contrast: float
    noise_hu: float
    prevalence: float
    institution: str


CT_SITE_PROFILES: tuple[CtSiteProfile, ...] = (
    CtSiteProfile(
        manufacturer="Cygnus Systems", model="CT-9", size_scale=1.0, field_of_view_mm=360.0,
        slice_spacing_mm=5.0, feet_first=False, instance_numbers_reversed=False,
        rescale_slope=1.0, rescale_intercept=-1024.0, windows=((-600.0, 1500.0), (40.0, 400.0)),
        contrast=1.0, noise_hu=25.0, prevalence=0.45, institution="Synthetic Hospital A",
    ),
    CtSiteProfile(
        manufacturer="Borealis Medical", model="BX-CT", size_scale=56 / 48, field_of_view_mm=380.0,
        slice_spacing_mm=6.0, feet_first=True, instance_numbers_reversed=True,
        rescale_slope=0.5, rescale_intercept=-1000.0, windows=(),
        contrast=0.9, noise_hu=35.0, prevalence=0.5, institution="Synthetic Hospital B",
    ),
    CtSiteProfile(
        manufacturer="Acme Imaging", model="AX-CT", size_scale=64 / 48, field_of_view_mm=340.0,
        slice_spacing_mm=4.0, feet_first=False, instance_numbers_reversed=False,
        rescale_slope=1.0, rescale_intercept=-1024.0, windows=((40.0, 350.0),),
        contrast=1.1, noise_hu=30.0, prevalence=0.55, institution="Synthetic Hospital C",
    ),
)


def synthesize_ct_hospitals(
    out_dir: Path,
    *,
    n_sites: int = 3,
    studies_per_site: int = 240,
    slices: int = 16,
    image_size: int = 48,
    test_fraction: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write `n_sites` CT hospitals under `out_dir` (`studies/<n>/<uid>.dcm` and labels.csv).

    Raises:
        FedmedError: an argument out of range.
        DataError: a site folder already holds files and `overwrite` is False.
    """
    if studies_per_site < 4:
        raise FedmedError(f"studies_per_site must be at least 4 (train and test), got {studies_per_site}")
    if not 2 <= slices <= 512:
        raise FedmedError(f"slices must be between 2 and 512, got {slices}")
    if image_size < 16:
        raise FedmedError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise FedmedError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    site_dirs = [Path(out_dir) / name for name in site_names(n_sites)]
    for site_dir in site_dirs:
        check_site_dir(site_dir, overwrite=overwrite)
    with pydicom_config.disable_value_validation():  # valid by construction; twice as fast
        for index, site_dir in enumerate(site_dirs):
            _clear(site_dir)
            _write_site(
                site_dir, profile=CT_SITE_PROFILES[index % len(CT_SITE_PROFILES)], n_studies=studies_per_site,
                slices=slices, image_size=image_size, test_fraction=test_fraction, seed=seed,
            )
    return site_dirs


def _clear(site_dir: Path) -> None:
    """Remove what a previous synthesis wrote (studies/*/*.dcm and labels.csv)."""
    for old in sorted((site_dir / "studies").glob("*/*.dcm")):
        old.unlink()
    for folder in sorted((site_dir / "studies").glob("*")):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (site_dir / "labels.csv").unlink(missing_ok=True)
    (site_dir / "studies").mkdir(parents=True, exist_ok=True)


def _write_site(
    site_dir: Path, *, profile: CtSiteProfile, n_studies: int, slices: int, image_size: int,
    test_fraction: float, seed: int,
) -> None:
    name = site_dir.name
    rng = np.random.default_rng([seed, string.ascii_lowercase.index(name[-1]), 3])
    size = max(16, round(image_size * profile.size_scale))
    labels = draw_labels(rng, n_studies, profile.prevalence)
    test = draw_test_split(rng, labels, test_fraction)
    sexes = np.where(rng.random(n_studies) < 0.5, "F", "M")
    ages = np.clip(np.round(rng.normal(62.0, 14.0, n_studies)), 18, 95).astype(int)
    by_uid = name == "site-c"  # one site's manifest names series by UID, the others by folder
    rows = []
    for i in range(n_studies):
        scale = 1.0
        if name == BIASED_SITE and sexes[i] == "F":
            scale = float(rng.uniform(*FEMALE_NODULE_SCALE))
        hu = _draw_volume(rng, profile, size=size, slices=slices, nodule=bool(labels[i]), scale=scale)
        folder = f"studies/{i:04d}"
        (site_dir / folder).mkdir(exist_ok=True)
        series_uid = _write_study(
            site_dir / folder, profile, hu, name=name, index=i, seed=seed, sex=str(sexes[i]), age=int(ages[i]),
        )
        rows.append((series_uid if by_uid else folder, int(labels[i]), "test" if test[i] else "train"))
    with open(site_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "label", "split"])
        writer.writerows(rows)


def _draw_volume(
    rng: np.random.Generator, profile: CtSiteProfile, *, size: int, slices: int, nodule: bool, scale: float,
) -> np.ndarray:
    """One chest CT (slices, size, size) in HU, slice 0 the most cranial."""
    f32 = np.float32
    pixel = profile.field_of_view_mm / size
    y = ((np.arange(size) + 0.5 - size / 2) * pixel).astype(f32)[None, :, None]
    x = ((np.arange(size) + 0.5 - size / 2) * pixel).astype(f32)[None, None, :]
    z = ((np.arange(slices) - (slices - 1) / 2) * profile.slice_spacing_mm).astype(f32)[:, None, None]
    half_z = slices * profile.slice_spacing_mm / 2

    hu = np.full((slices, size, size), -1000.0, f32)
    body = ((x / rng.uniform(150, 165)) ** 2 + (y / rng.uniform(105, 120)) ** 2) < 1.0
    tissue = 40.0 + 15.0 * low_frequency(rng, 1, size, grid=4)[0]
    hu = np.where(body, tissue[None], hu)
    lung_dx, lung_y = rng.uniform(65, 80), rng.uniform(-10, 5)
    for side in (-1.0, 1.0):
        ellipsoid = ((x - side * lung_dx) / 50.0) ** 2 + ((y - lung_y) / 70.0) ** 2 + (z / (half_z * 1.4)) ** 2
        lung = soft_step((1.0 - ellipsoid) * f32(10.0))
        hu = hu * (1 - lung) + f32(-850.0) * lung
    spine = soft_step((1.0 - ((x / 16.0) ** 2 + ((y - 85.0) / 16.0) ** 2)) * f32(8.0))
    hu = hu * (1 - spine) + f32(450.0) * spine
    if nodule:
        side = rng.choice((-1.0, 1.0))
        centre = (
            rng.uniform(-0.45, 0.45) * half_z,
            lung_y + rng.uniform(-35, 35),
            side * lung_dx + rng.uniform(-22, 22),
        )
        radius = rng.uniform(*_NODULE_RADIUS_MM) * scale
        distance = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        hu = hu + f32(_NODULE_HU * profile.contrast * scale) * soft_step((radius - distance) / f32(0.15 * radius))
    hu = hu + rng.standard_normal(hu.shape, dtype=f32) * f32(profile.noise_hu)
    return hu


def _write_study(
    folder: Path, profile: CtSiteProfile, hu: np.ndarray, *, name: str, index: int, seed: int, sex: str, age: int,
) -> str:
    """Write one file per slice; returns the SeriesInstanceUID."""

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["fedmed-synth-ct", str(seed), name, str(index), kind])

    site = name.upper()
    datasets = ct_slice_datasets(
        profile, hu, uid, index=index, sex=sex, age=age, patient_name=f"{site}^CT{index:04d}",
        patient_id=f"{site}-CT-{index:04d}", accession=f"{site}-CT-{index:05d}",
    )
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(buffer.getvalue())
    return datasets[0].SeriesInstanceUID


def ct_slice_datasets(
    profile: CtSiteProfile,
    hu: np.ndarray,
    uid: Callable[[str], str],
    *,
    index: int,
    sex: str,
    age: int,
    patient_name: str,
    patient_id: str,
    accession: str,
    first_day: dt.date = _STUDY_DAY0,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of the HU volume, in the site's geometry; `uid(kind)` gives each UID.

    Both CT synthesizers (binary, segmentation) write their series through this.
    """
    slices, size, _ = hu.shape
    stored = np.clip(np.round((hu - profile.rescale_intercept) / profile.rescale_slope), 0, 4095).astype(np.uint16)
    pixel = round(profile.field_of_view_mm / size, 4)
    corner = -profile.field_of_view_mm / 2
    day = first_day + dt.timedelta(days=index % 365)
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    datasets = []
    for k in range(slices):
        position_z = -k * profile.slice_spacing_mm  # slice k lies k spacings below the top
        ds = study_dataset(
            CT_IMAGE_STORAGE, uid(f"instance-{k}"), index=index, sex=sex, age=age, day=day, modality="CT",
            manufacturer=profile.manufacturer, model=profile.model, institution=profile.institution,
            patient_name=patient_name, patient_id=patient_id, accession=accession,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyID = f"{index:05d}"
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CHEST AXIAL"
        ds.InstanceNumber = (slices - k) if profile.instance_numbers_reversed else k + 1
        ds.PatientPosition = "FFS" if profile.feet_first else "HFS"
        ds.ImagePositionPatient = [corner, corner, position_z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = position_z
        ds.SliceThickness = profile.slice_spacing_mm
        ds.PixelSpacing = [pixel, pixel]
        ds.KVP = 120
        ds.BurnedInAnnotation = "NO"
        ds.RescaleType = "HU"
        ds.RescaleSlope = profile.rescale_slope
        ds.RescaleIntercept = profile.rescale_intercept
        if profile.windows:
            centres, widths = [c for c, _ in profile.windows], [w for _, w in profile.windows]
            ds.WindowCenter = centres if len(centres) > 1 else centres[0]
            ds.WindowWidth = widths if len(widths) > 1 else widths[0]
        ds.set_pixel_data(stored[k], "MONOCHROME2", 12, generate_instance_uid=False)
        datasets.append(ds)
    return datasets
