"""Synthetic hospitals: real DICOM files for a binary "lesion present" task, one folder per site.

Why synthetic: fedmed's tests and demos need data that exercise the real reading path (file
meta, rescale, windowing, MONOCHROME1, per-vendor quirks) and have known structure, without
any patient ever being involved.

Each site folder holds `images/<SOPInstanceUID>.dcm` and `labels.csv` (`file,label,split`).
A label-1 image has one bright round blob (radius 8-14 % of the image width) on a textured
"anatomy" background (two dark lung fields, a bright spine band, rib stripes, smooth
low-frequency variation and pixel noise). Sites differ the way scanners do (`SITE_PROFILES`):
vendor tags, matrix size and pixel spacing, bits stored, rescale slope/intercept, storage
polarity (site-b writes MONOCHROME1), windows (site-a one, site-c a CT-style pair in HU with
intercept -1024, site-b none), lesion contrast, noise level and label prevalence.

Planted bias (on purpose, for subgroup analyses to find): at site-b, lesions in female
patients (PatientSex "F") are drawn at 35-45 % of the site's normal contrast, so that
subgroup is harder to classify there. No other site has it. See `BIASED_SITE` and
`FEMALE_LESION_CONTRAST`.

Everything is a function of `seed`: UIDs come from `generate_uid(entropy_srcs=...)`, dates
and times are fixed, so two runs write byte-identical files.
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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from fedmed.errors import DataError, FedmedError

__all__ = [
    "BIASED_SITE",
    "FEMALE_LESION_CONTRAST",
    "SITE_PROFILES",
    "SiteProfile",
    "check_site_dir",
    "draw_labels",
    "draw_test_split",
    "low_frequency",
    "site_names",
    "soft_step",
    "study_dataset",
    "synthesize_hospitals",
]

DIGITAL_XRAY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

BIASED_SITE = "site-b"
FEMALE_LESION_CONTRAST = (0.35, 0.45)  # fraction of normal lesion contrast, uniform

_LESION_RADIUS = (0.08, 0.14)  # fraction of image width
_LESION_AMPLITUDE = 0.45  # in unit intensity before the site's contrast factor
_STUDY_DAY0 = dt.date(2024, 1, 8)
_CHUNK = 64  # images drawn at once


@dataclass(frozen=True)
class SiteProfile:
    """One hospital's scanner: how unit intensity x becomes stored pixel values and tags.

    Modality value v = value_offset + value_scale * x; stored = (v - intercept) / slope,
    rounded and clipped to the bits stored, then inverted for MONOCHROME1.
    """

    manufacturer: str
    model: str
    modality: str  # "DX" or "CT"
    size_scale: float  # Rows = Columns = round(image_size * size_scale)
    field_of_view_mm: float
    photometric: str
    bits_stored: int
    rescale_slope: float
    rescale_intercept: float
    value_offset: float
    value_scale: float
    windows: tuple[tuple[float, float], ...]  # (center, width) in modality units; () = none
    contrast: float  # multiplies the lesion amplitude
    noise: float  # pixel noise std in unit intensity
    prevalence: float  # fraction of label-1 images
    institution: str

    @property
    def sop_class_uid(self) -> str:
        return CT_IMAGE_STORAGE if self.modality == "CT" else DIGITAL_XRAY_STORAGE


SITE_PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        manufacturer="Acme Imaging", model="AX-100", modality="DX", size_scale=1.0,
        field_of_view_mm=400.0, photometric="MONOCHROME2", bits_stored=12,
        rescale_slope=1.0, rescale_intercept=0.0, value_offset=200.0, value_scale=3000.0,
        windows=((1850.0, 3600.0),), contrast=1.0, noise=0.03,
        prevalence=0.30, institution="Synthetic Hospital A",
    ),
    SiteProfile(
        manufacturer="Borealis Medical", model="BX-2", modality="DX", size_scale=112 / 96,
        field_of_view_mm=430.0, photometric="MONOCHROME1", bits_stored=10,
        rescale_slope=2.0, rescale_intercept=-100.0, value_offset=50.0, value_scale=1500.0,
        windows=(), contrast=0.85, noise=0.05, prevalence=0.50,
        institution="Synthetic Hospital B",
    ),
    SiteProfile(
        manufacturer="Cygnus Systems", model="CT-9", modality="CT", size_scale=128 / 96,
        field_of_view_mm=350.0, photometric="MONOCHROME2", bits_stored=12,
        rescale_slope=1.0, rescale_intercept=-1024.0, value_offset=-120.0, value_scale=300.0,
        windows=((40.0, 400.0), (-600.0, 1500.0)), contrast=1.1, noise=0.04,
        prevalence=0.65, institution="Synthetic Hospital C",
    ),
    SiteProfile(
        manufacturer="Delphi Radiology", model="DR-7", modality="DX", size_scale=104 / 96,
        field_of_view_mm=410.0, photometric="MONOCHROME2", bits_stored=16,
        rescale_slope=0.25, rescale_intercept=0.0, value_offset=1000.0, value_scale=9000.0,
        windows=((5950.0, 11700.0),), contrast=0.9, noise=0.06,
        prevalence=0.40, institution="Synthetic Hospital D",
    ),
)


def site_names(n_sites: int) -> list[str]:
    """Folder names site-a, site-b, ... for `n_sites` sites (at most 26)."""
    if not 1 <= n_sites <= len(string.ascii_lowercase):
        raise FedmedError(f"n_sites must be between 1 and 26, got {n_sites}")
    return [f"site-{letter}" for letter in string.ascii_lowercase[:n_sites]]


def synthesize_hospitals(
    out_dir: Path,
    *,
    n_sites: int = 3,
    images_per_site: int = 600,
    image_size: int = 96,
    test_fraction: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write `n_sites` synthetic hospital folders under `out_dir` and return their paths.

    Sites cycle through `SITE_PROFILES`. `image_size` is site-a's matrix; other sites scale it.
    With `overwrite=True` an existing site folder's `images/*.dcm` and `labels.csv` are
    replaced; otherwise a non-empty site folder is refused so real data is never mixed in.

    Raises:
        FedmedError: for an argument out of range.
        DataError: when a site folder already holds files and `overwrite` is False.
    """
    _check_arguments(n_sites, images_per_site, image_size, test_fraction)
    out_dir = Path(out_dir)
    site_dirs = [out_dir / name for name in site_names(n_sites)]
    for site_dir in site_dirs:  # refuse before writing anything
        check_site_dir(site_dir, overwrite=overwrite)

    # Our values are valid by construction; skipping pydicom's per-value checks halves the
    # writing time.
    with pydicom_config.disable_value_validation():
        for index, site_dir in enumerate(site_dirs):
            _clear_site_dir(site_dir)
            _write_site(
                site_dir,
                name=site_dir.name,
                profile=SITE_PROFILES[index % len(SITE_PROFILES)],
                n_images=images_per_site,
                image_size=image_size,
                test_fraction=test_fraction,
                seed=seed,
            )
    return site_dirs


def _check_arguments(n_sites: int, images: int, size: int, test_fraction: float) -> None:
    site_names(n_sites)
    if images < 4:
        raise FedmedError(f"images_per_site must be at least 4 (train and test), got {images}")
    if size < 16:
        raise FedmedError(f"image_size must be at least 16 pixels, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise FedmedError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def check_site_dir(site_dir: Path, *, overwrite: bool) -> None:
    if site_dir.exists() and any(site_dir.iterdir()) and not overwrite:
        raise DataError(
            f"Site folder {site_dir} already has files; choose an empty output folder "
            "or pass overwrite=True to replace a previous synthesis"
        )


def _clear_site_dir(site_dir: Path) -> None:
    """Remove what a previous synthesis wrote (only *.dcm in images/ and labels.csv)."""
    images_dir = site_dir / "images"
    for old in images_dir.glob("*.dcm"):
        old.unlink()
    (site_dir / "labels.csv").unlink(missing_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)


# --- one site ------------------------------------------------------------------------------


def _write_site(
    site_dir: Path,
    *,
    name: str,
    profile: SiteProfile,
    n_images: int,
    image_size: int,
    test_fraction: float,
    seed: int,
) -> None:
    site_index = string.ascii_lowercase.index(name[-1])
    rng = np.random.default_rng([seed, site_index])
    size = max(16, round(image_size * profile.size_scale))
    labels = draw_labels(rng, n_images, profile.prevalence)
    test = draw_test_split(rng, labels, test_fraction)
    sexes = np.where(rng.random(n_images) < 0.5, "F", "M")
    ages = np.clip(np.round(rng.normal(58.0, 16.0, n_images)), 18, 95).astype(int)
    contrast = np.full(n_images, profile.contrast)
    if name == BIASED_SITE:
        faint = rng.uniform(*FEMALE_LESION_CONTRAST, n_images)
        contrast = np.where(sexes == "F", contrast * faint, contrast)

    rows = []
    for start in range(0, n_images, _CHUNK):  # chunks: whole-site arrays thrash the cache
        chunk = slice(start, min(start + _CHUNK, n_images))
        units = _draw_images(
            rng, chunk.stop - start, size, labels[chunk], contrast[chunk], profile.noise
        )
        for offset, pixels in enumerate(to_stored(units, profile)):
            i = start + offset
            ds = _build_dataset(
                profile, name=name, index=i, seed=seed, size=size, sex=str(sexes[i]),
                age=int(ages[i]), pixels=pixels,
            )
            relative = f"images/{ds.SOPInstanceUID}.dcm"
            buffer = io.BytesIO()  # one write() per file: pydicom's own are many and small
            ds.save_as(buffer, enforce_file_format=True)
            (site_dir / relative).write_bytes(buffer.getvalue())
            rows.append((relative, int(labels[i]), "test" if test[i] else "train"))
    with open(site_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "label", "split"])
        writer.writerows(rows)


def draw_labels(rng: np.random.Generator, n: int, prevalence: float) -> np.ndarray:
    """Exactly round(prevalence * n) positives (at least one of each class), shuffled."""
    positives = min(n - 1, max(1, round(prevalence * n)))
    labels = np.zeros(n, dtype=np.int64)
    labels[:positives] = 1
    return rng.permutation(labels)


def draw_test_split(rng: np.random.Generator, labels: np.ndarray, fraction: float) -> np.ndarray:
    """Stratified by label, so every site's test set has both classes."""
    test = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        members = np.flatnonzero(labels == value)
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        if count > 0:
            test[rng.choice(members, size=count, replace=False)] = True
    return test


def _draw_images(
    rng: np.random.Generator,
    n: int,
    size: int,
    labels: np.ndarray,
    contrast: np.ndarray,
    noise: float,
) -> np.ndarray:
    """Unit-intensity images (n, size, size), roughly 0.2-0.7 background, lesions brighter."""
    f32 = np.float32
    axis = ((np.arange(size) + 0.5) / size).astype(f32)
    yy, xx = axis[None, :, None], axis[None, None, :]

    def draw(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1)).astype(f32)

    images = 0.62 + low_frequency(rng, n, size, grid=5) * f32(0.05)
    lung_y, lung_dx = draw(0.46, 0.54), draw(0.17, 0.23)
    half_h, half_w = draw(0.26, 0.34), draw(0.11, 0.15)
    for centre_x in (0.5 - lung_dx, 0.5 + lung_dx):
        ellipse = ((yy - lung_y) / half_h) ** 2 + ((xx - centre_x) / half_w) ** 2
        lung = soft_step((1.0 - ellipse) * f32(8.0))
        ribs = f32(0.04) * np.sin(f32(2 * np.pi) * (yy * draw(6.0, 8.0) + draw(0.0, 1.0)))
        images -= lung * (f32(0.28) - ribs)
    images += f32(0.08) * np.exp(-(((xx - draw(0.48, 0.52)) / f32(0.05)) ** 2))

    radius = draw(*_LESION_RADIUS)
    centre_y, centre_x = draw(0.2, 0.8), draw(0.2, 0.8)
    amplitude = (_LESION_AMPLITUDE * contrast[:, None, None]).astype(f32) * draw(0.85, 1.15)
    amplitude *= labels[:, None, None].astype(f32)
    distance = np.sqrt((yy - centre_y) ** 2 + (xx - centre_x) ** 2)
    images += amplitude * soft_step((radius - distance) / (f32(0.12) * radius))
    images += rng.standard_normal((n, size, size), dtype=f32) * f32(noise)
    return images


def soft_step(z: np.ndarray) -> np.ndarray:
    """The logistic function written with tanh, which cannot overflow."""
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def low_frequency(rng: np.random.Generator, n: int, size: int, *, grid: int) -> np.ndarray:
    """Smooth random fields: a coarse normal grid, bilinearly upsampled (A @ G @ A.T)."""
    coarse = rng.standard_normal((n, grid, grid), dtype=np.float32)
    position = (np.arange(size) + 0.5) / size * (grid - 1)
    lower = np.clip(np.floor(position).astype(int), 0, grid - 2)
    weight = position - lower
    interp = np.zeros((size, grid), dtype=np.float32)
    interp[np.arange(size), lower] = 1.0 - weight
    interp[np.arange(size), lower + 1] = weight
    return np.einsum("ij,njk,lk->nil", interp, coarse, interp)


def to_stored(units: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """Unit intensity to the site's stored values: rescale undone, clipped to its bits, MONOCHROME1 inverted."""
    values = profile.value_offset + profile.value_scale * units
    stored = (values - profile.rescale_intercept) / profile.rescale_slope
    top = 2**profile.bits_stored - 1
    stored = np.clip(np.round(stored), 0, top)
    if profile.photometric == "MONOCHROME1":
        stored = top - stored
    return stored.astype(np.uint16)


def study_dataset(
    sop_class: str,
    sop_instance: str,
    *,
    index: int,
    sex: str,
    age: int,
    day: dt.date,
    modality: str,
    manufacturer: str,
    model: str,
    institution: str,
    patient_name: str,
    patient_id: str,
    accession: str,
) -> Dataset:
    """The file meta, patient (a pseudonym) and study tags every synthetic file carries."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + index % 10:02d}{index % 60:02d}00"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name  # pseudonym, never a real name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "fedmed synthetic data: no patient involved"
    ds.BodyPartExamined = "CHEST"
    return ds


def _build_dataset(
    profile: SiteProfile,
    *,
    name: str,
    index: int,
    seed: int,
    size: int,
    sex: str,
    age: int,
    pixels: np.ndarray,
) -> Dataset:
    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["fedmed-synth", str(seed), name, str(index), kind])

    site = name.upper()
    return image_dataset(
        profile, uid, index=index, size=size, sex=sex, age=age, pixels=pixels,
        patient_name=f"{site}^{index:04d}", patient_id=f"{site}-{index:04d}", accession=f"{site}-ACC-{index:05d}",
    )


def image_dataset(
    profile: SiteProfile,
    uid: Callable[[str], str],
    *,
    index: int,
    size: int,
    sex: str,
    age: int,
    pixels: np.ndarray,
    patient_name: str,
    patient_id: str,
    accession: str,
    first_day: dt.date = _STUDY_DAY0,
) -> Dataset:
    """A site's DX or CT image of stored `pixels`, in its scanner's tags; `uid(kind)` gives each UID.

    Every 2-D synthesizer (binary, multi-label, segmentation) writes its images through this,
    each with UIDs and pseudonyms of its own.
    """
    ds = study_dataset(
        profile.sop_class_uid, uid("instance"), index=index, sex=sex, age=age,
        day=first_day + dt.timedelta(days=index % 365), modality=profile.modality,
        manufacturer=profile.manufacturer, model=profile.model, institution=profile.institution,
        patient_name=patient_name, patient_id=patient_id, accession=accession,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if profile.modality == "CT" else [])
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = f"{index:05d}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    spacing = round(profile.field_of_view_mm / size, 4)
    ds.PixelSpacing = [spacing, spacing]
    if profile.modality == "CT":
        ds.FrameOfReferenceUID = uid("frame")
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = 2.5
        ds.KVP = 120
        corner = -profile.field_of_view_mm / 2
        ds.ImagePositionPatient = [corner, corner, 0.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleType = "HU"
    else:
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.PresentationLUTShape = "INVERSE" if profile.photometric == "MONOCHROME1" else "IDENTITY"
    ds.RescaleSlope = profile.rescale_slope
    ds.RescaleIntercept = profile.rescale_intercept
    if profile.windows:
        centres = [c for c, _ in profile.windows]
        widths = [w for _, w in profile.windows]
        ds.WindowCenter = centres if len(centres) > 1 else centres[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    ds.set_pixel_data(pixels, profile.photometric, profile.bits_stored, generate_instance_uid=False)
    return ds
