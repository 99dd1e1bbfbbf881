"""Synthetic segmentation hospitals: DICOM images, each with a DICOM SEG of its structures.

Why: segmentation needs data whose masks are known exactly, read through the real path
(file meta, rescale, windowing, MONOCHROME1, a SEG's frame references and bit-packed
pixels), with no patient involved. `fedmed.data.masks` reads what is written here.

2-D (`synthesize_segmentation_hospitals`): each site folder holds `images/<uid>.dcm`,
`masks/<uid>.dcm` (a BINARY SEG, PS3.3 A.51 / C.8.20, one segment per structure drawn, its
Segment Label the structure's name) and `labels.csv` with `file,mask,split`. Sites differ as
in `fedmed.data.synth.SITE_PROFILES` (vendor, matrix and pixel spacing, bits stored,
rescale, window, MONOCHROME1 at site-b, noise, contrast). At site-c every tenth mask is
written as NIfTI instead (`masks/<uid>.nii.gz`, the dcm2niix layout), so both mask readers
are exercised.

3-D (`synthesize_ct_segmentation_hospitals`): chest CT series as in `fedmed.data.synth_ct`
(one file per slice, files named by UID, `CT_SITE_PROFILES`), each with one multi-frame SEG
referencing every slice; `labels.csv` names the series folder and its SEG.

Every image holds at least one lesion: a blob (a rotated ellipse or ellipsoid whose edge is
soft, a logistic step) on a textured background. The mask is the blob at half its height
(where the soft step crosses 1/2). With several structures, each is drawn as its own blob
and the segments may overlap; as `fedmed.data.masks` reads them, the structure later in
`structures` wins where they do.

Planted bias (on purpose, for the subgroup analyses to find): at site-b, lesions of female
patients are smaller (`FEMALE_LESION_SCALE`) and fainter (`FEMALE_LESION_CONTRAST`), so
their Dice is lower there. Everything is a function of `seed`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from fedmed.data.masks import capture_mask_diagnostics
from fedmed.data.synth import (
    BIASED_SITE,
    SITE_PROFILES,
    SiteProfile,
    check_site_dir,
    image_dataset,
    low_frequency,
    site_names,
    soft_step,
    to_stored,
)
from fedmed.data.synth_ct import CT_SITE_PROFILES, CtSiteProfile, ct_slice_datasets
from fedmed.errors import FedmedError

__all__ = [
    "FEMALE_LESION_CONTRAST",
    "FEMALE_LESION_SCALE",
    "LESION_RADIUS",
    "MASK_MANIFEST_COLUMNS",
    "NIFTI_SITE",
    "SegmentationSite",
    "synthesize_ct_segmentation_hospitals",
    "synthesize_segmentation_hospitals",
]

MASK_MANIFEST_COLUMNS = ("file", "mask", "split")
LESION_RADIUS = (0.10, 0.17)  # the larger semi-axis, as a fraction of the image width
FEMALE_LESION_SCALE = (0.55, 0.7)  # site-b, female: lesion semi-axes times this, uniform
FEMALE_LESION_CONTRAST = (0.4, 0.55)  # site-b, female: lesion contrast times this, uniform
NIFTI_SITE = "site-c"  # writes every `_NIFTI_EVERY`-th mask as NIfTI
_NIFTI_EVERY = 10

_LESION_AMPLITUDE = 0.4  # unit intensity, before the site's contrast factor
_EDGE = 0.12  # soft edge width, as a fraction of the blob's radius
_SECOND_LESION = 0.3  # chance of a second blob of the first structure
_CT_LESION_RADIUS_MM = (22.0, 34.0)
_CT_LESION_HU = 380.0
_STUDY_DAY0 = dt.date(2024, 5, 6)
_CHUNK = 64
_SEG_SERIES_NUMBER = 100
_SOFTWARE = ("fedmed", "fedmed-synth-seg", "0.1")

# (category, type) codes (SNOMED CT, PS3.16 CID 7150 / 7151) for names a synthesis may use;
# other names are described as a morphologically abnormal "Lesion". The reader matches
# structures by Segment Label, not by code.
_PROPERTY_CODES = {
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "nodule": ("MorphologicallyAbnormalStructure", "Nodule"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "liver": ("AnatomicalStructure", "Liver"),
    "lung": ("AnatomicalStructure", "Lung"),
    "kidney": ("AnatomicalStructure", "Kidney"),
}


@dataclass(frozen=True)
class SegmentationSite:
    """One written site: its folder and, per manifest row, the lesion area in pixels (or voxels)
    and the patient's sex, so callers can check the planted bias without reading the masks."""

    site_dir: Path
    files: tuple[str, ...]
    lesion_areas: tuple[int, ...]
    sexes: tuple[str, ...]


def synthesize_segmentation_hospitals(
    root: Path,
    *,
    n_sites: int = 3,
    images_per_site: int = 400,
    image_size: int = 64,
    test_fraction: float = 0.25,
    seed: int = 0,
    structures: Sequence[str] = ("lesion",),
    overwrite: bool = False,
) -> list[SegmentationSite]:
    """Write `n_sites` 2-D segmentation hospitals under `root` (see the module docstring).

    `image_size` is site-a's matrix; other sites scale it as their profile says (site-b
    7/6, site-c 4/3). A site folder that already holds files is refused unless `overwrite`,
    which replaces only what a previous synthesis wrote.

    Raises:
        FedmedError: an argument out of range or an invalid structure list.
        DataError: a site folder already holds files and `overwrite` is False.
    """
    names = _check_arguments(n_sites, images_per_site, image_size, test_fraction, structures)
    site_dirs = [Path(root) / name for name in site_names(n_sites)]
    for site_dir in site_dirs:
        check_site_dir(site_dir, overwrite=overwrite)
    written = []
    # values valid by construction: skipping pydicom's per-value checks makes writing ~3x faster
    with pydicom_config.disable_value_validation(), capture_mask_diagnostics("fedmed synthetic segmentation"):
        for index, site_dir in enumerate(site_dirs):
            _clear(site_dir, ("images/*.dcm", "masks/*.dcm", "masks/*.nii.gz"))
            written.append(_write_site(
                site_dir, profile=SITE_PROFILES[index % len(SITE_PROFILES)], n_images=images_per_site,
                image_size=image_size, test_fraction=test_fraction, seed=seed, structures=names,
            ))
    return written


def synthesize_ct_segmentation_hospitals(
    root: Path,
    *,
    n_sites: int = 3,
    studies_per_site: int = 60,
    slices: int = 16,
    image_size: int = 48,
    test_fraction: float = 0.25,
    seed: int = 0,
    structures: Sequence[str] = ("lesion",),
    overwrite: bool = False,
) -> list[SegmentationSite]:
    """Write `n_sites` 3-D CT segmentation hospitals: `studies/<n>/<uid>.dcm`, `masks/<n>.dcm`, labels.csv.

    Each study is a CT series in `CT_SITE_PROFILES`' geometry (site-b feet first, instance
    numbers reversed) and its SEG references every slice by SOP Instance UID.

    Raises:
        FedmedError: an argument out of range or an invalid structure list.
        DataError: a site folder already holds files and `overwrite` is False.
    """
    names = _check_arguments(n_sites, studies_per_site, image_size, test_fraction, structures)
    if not 2 <= slices <= 512:
        raise FedmedError(f"slices must be between 2 and 512, got {slices}")
    site_dirs = [Path(root) / name for name in site_names(n_sites)]
    for site_dir in site_dirs:
        check_site_dir(site_dir, overwrite=overwrite)
    written = []
    with pydicom_config.disable_value_validation(), capture_mask_diagnostics("fedmed synthetic CT segmentation"):
        for index, site_dir in enumerate(site_dirs):
            _clear(site_dir, ("studies/*/*.dcm", "masks/*.dcm"))
            written.append(_write_ct_site(
                site_dir, profile=CT_SITE_PROFILES[index % len(CT_SITE_PROFILES)], n_studies=studies_per_site,
                slices=slices, image_size=image_size, test_fraction=test_fraction, seed=seed, structures=names,
            ))
    return written


def _check_arguments(
    n_sites: int, images: int, size: int, test_fraction: float, structures: Sequence[str]
) -> tuple[str, ...]:
    site_names(n_sites)
    if images < 4:
        raise FedmedError(f"images_per_site must be at least 4 (train and test), got {images}")
    if size < 16:
        raise FedmedError(f"image_size must be at least 16 pixels, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise FedmedError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if isinstance(structures, str):
        raise FedmedError(f"structures must be a list of names, got the string '{structures}'")
    names = tuple(str(name).strip() for name in structures)
    if not names or not all(names) or len(names) > 8:
        raise FedmedError(f"structures must name 1 to 8 structures, got {list(structures)}")
    if len({name.casefold() for name in names}) != len(names):
        raise FedmedError(f"structures must differ (case-insensitively), got {list(names)}")
    return names


def _clear(site_dir: Path, patterns: tuple[str, ...]) -> None:
    """Remove what a previous synthesis wrote (the patterns' files, emptied folders, labels.csv)."""
    for pattern in patterns:
        for old in sorted(site_dir.glob(pattern)):
            old.unlink()
    for folder in sorted(site_dir.glob("studies/*")):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (site_dir / "labels.csv").unlink(missing_ok=True)
    for folder in {pattern.split("/", 1)[0] for pattern in patterns}:
        (site_dir / folder).mkdir(parents=True, exist_ok=True)


def _draw_split(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """round(fraction * n) test records (at least one, and at least one left to train), shuffled."""
    count = min(n - 1, max(1, round(fraction * n)))
    test = np.zeros(n, dtype=bool)
    test[:count] = True
    return rng.permutation(test)


def _draw_patients(rng: np.random.Generator, n: int, mean_age: float) -> tuple[np.ndarray, np.ndarray]:
    sexes = np.where(rng.random(n) < 0.5, "F", "M")
    ages = np.clip(np.round(rng.normal(mean_age, 15.0, n)), 18, 95).astype(int)
    return sexes, ages


def _lesion_factors(rng: np.random.Generator, name: str, sexes: np.ndarray, scale: tuple[float, float],
                    contrast: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per record (size factor, contrast factor): 1 except for women at the biased site."""
    n = len(sexes)
    size = np.ones(n, dtype=np.float32)
    faint = np.ones(n, dtype=np.float32)
    if name == BIASED_SITE:
        female = sexes == "F"
        size = np.where(female, rng.uniform(*scale, n), 1.0).astype(np.float32)
        faint = np.where(female, rng.uniform(*contrast, n), 1.0).astype(np.float32)
    return size, faint


def _write_manifest(site_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(site_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MASK_MANIFEST_COLUMNS)
        writer.writerows(rows)


def _write_bytes(path: Path, ds: Dataset) -> None:
    buffer = io.BytesIO()  # one write() per file: pydicom's own are many and small
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())


# --- 2-D -----------------------------------------------------------------------------------


def _write_site(
    site_dir: Path, *, profile: SiteProfile, n_images: int, image_size: int, test_fraction: float, seed: int,
    structures: tuple[str, ...],
) -> SegmentationSite:
    name = site_dir.name
    rng = np.random.default_rng([seed, string.ascii_lowercase.index(name[-1]), 11])
    size = max(16, round(image_size * profile.size_scale))
    test = _draw_split(rng, n_images, test_fraction)
    sexes, ages = _draw_patients(rng, n_images, 58.0)
    scale, faint = _lesion_factors(rng, name, sexes, FEMALE_LESION_SCALE, FEMALE_LESION_CONTRAST)
    descriptions = _segment_descriptions(structures)
    rows, areas = [], []
    for start in range(0, n_images, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, n_images))
        units, labels = _draw_images(
            rng, chunk.stop - start, size, scale[chunk], faint[chunk] * profile.contrast, profile.noise,
            len(structures),
        )
        for offset, pixels in enumerate(to_stored(units, profile)):
            i = start + offset
            ds = _image_dataset(profile, name=name, index=i, seed=seed, size=size, sex=str(sexes[i]),
                                age=int(ages[i]), pixels=pixels)
            image = f"images/{ds.SOPInstanceUID}.dcm"
            _write_bytes(site_dir / image, ds)
            label_map = labels[offset]
            if name == NIFTI_SITE and i % _NIFTI_EVERY == _NIFTI_EVERY - 1:
                mask = f"masks/{ds.SOPInstanceUID}.nii.gz"
                _write_nifti_2d(site_dir / mask, label_map, ds)
            else:
                mask = f"masks/{ds.SOPInstanceUID}.dcm"
                uid = _uid_maker("fedmed-synth-seg", seed, name, i)
                seg = _segmentation([ds], label_map[None], descriptions, uid=uid)
                _write_bytes(site_dir / mask, seg)
            rows.append((image, mask, "test" if test[i] else "train"))
            areas.append(int(np.count_nonzero(label_map)))
    _write_manifest(site_dir, rows)
    return SegmentationSite(site_dir, tuple(r[0] for r in rows), tuple(areas), tuple(str(s) for s in sexes))


def _draw_images(
    rng: np.random.Generator, n: int, size: int, scale: np.ndarray, contrast: np.ndarray, noise: float,
    n_structures: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-intensity images (n, size, size) and their label maps (uint8, later structures on top)."""
    f32 = np.float32
    axis = ((np.arange(size) + 0.5) / size).astype(f32)
    yy, xx = axis[None, :, None], axis[None, None, :]

    def draw(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1)).astype(f32)

    # background: smooth variation, two darker fields with stripes, fine texture, noise
    images = 0.5 + low_frequency(rng, n, size, grid=4) * f32(0.06) + low_frequency(rng, n, size, grid=12) * f32(0.03)
    for centre_x in (draw(0.25, 0.33), draw(0.67, 0.75)):
        ellipse = ((yy - draw(0.45, 0.55)) / draw(0.26, 0.34)) ** 2 + ((xx - centre_x) / draw(0.12, 0.16)) ** 2
        field = soft_step((1.0 - ellipse) * f32(8.0))
        stripes = f32(0.03) * np.sin(f32(2 * np.pi) * (yy * draw(6.0, 8.0) + draw(0.0, 1.0)))
        images -= field * (f32(0.2) - stripes)

    labels = np.zeros((n, size, size), dtype=np.uint8)
    for k in range(n_structures):
        blobs = [np.ones(n, dtype=bool)]
        if k == 0:
            blobs.append(rng.random(n) < _SECOND_LESION)
        for present in blobs:
            radius = draw(*LESION_RADIUS) * scale[:, None, None] * f32(0.85**k)
            aspect = draw(0.7, 1.0)
            angle = draw(0.0, np.pi)
            cy, cx = draw(0.22, 0.78), draw(0.22, 0.78)
            u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
            v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
            rho = np.sqrt((u / radius) ** 2 + (v / (radius * aspect)) ** 2)
            amplitude = (f32(_LESION_AMPLITUDE * (1 + 0.5 * k)) * contrast[:, None, None] * draw(0.85, 1.15)
                         * present[:, None, None])
            images += amplitude * soft_step((1.0 - rho) / f32(_EDGE))
            inside = (rho <= 1.0) & present[:, None, None]
            labels[inside] = k + 1
    images += rng.standard_normal((n, size, size), dtype=f32) * f32(noise)
    return images, labels


def _uid_maker(kind: str, seed: int, name: str, index: int) -> Callable[[str], str]:
    def uid(what: str) -> str:
        return generate_uid(entropy_srcs=[kind, str(seed), name, str(index), what])

    return uid


def _image_dataset(
    profile: SiteProfile, *, name: str, index: int, seed: int, size: int, sex: str, age: int, pixels: np.ndarray,
) -> Dataset:
    """A DX or CT image as `fedmed.data.synth` writes them, with this synthesis' own UIDs."""
    uid = _uid_maker("fedmed-synth-seg", seed, name, index)
    site = name.upper()
    return image_dataset(
        profile, uid, index=index, size=size, sex=sex, age=age, pixels=pixels,
        patient_name=f"{site}^SEG{index:04d}", patient_id=f"{site}-SEG-{index:04d}",
        accession=f"{site}-SEG-{index:05d}",
        first_day=_STUDY_DAY0,
    )


def _write_nifti_2d(path: Path, label_map: np.ndarray, ds: Dataset) -> None:
    """A label map as dcm2niix lays out a 2-D image: voxel (column, row, 0), RAS+ affine (LPS x, y negated)."""
    spacing_row, spacing_column = (float(v) for v in ds.PixelSpacing)
    corner = [float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    affine = np.diag([-spacing_column, -spacing_row, float(ds.get("SliceThickness", 1.0) or 1.0), 1.0])
    affine[:3, 3] = [-corner[0], -corner[1], corner[2]]
    nifti = nib.Nifti1Image(np.ascontiguousarray(label_map.T[:, :, None]), affine)
    nifti.set_data_dtype(np.uint8)
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


# --- SEG -----------------------------------------------------------------------------------


def _segment_descriptions(structures: tuple[str, ...]) -> dict[str, tuple]:
    """Per structure, what its SegmentDescription says; AUTOMATIC: drawn by this module, not a person."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="fedmed synthetic ground truth", version=_SOFTWARE[2],
        # no CID 7162 family fits masks that are true by construction; the blob is thresholded
        family=codes.cid7162.MorphologicalOperations,
        parameters={"shape": "soft-edged ellipse", "boundary": "half height"},
    )
    described = {}
    for structure in structures:
        category, kind = _PROPERTY_CODES.get(structure.casefold(), _PROPERTY_CODES["lesion"])
        described[structure] = (getattr(codes.SCT, category), getattr(codes.SCT, kind), algorithm)
    return described


def _segmentation(
    sources: list[Dataset], label_map: np.ndarray, described: dict[str, tuple], *, uid: Callable[[str], str],
) -> hd.seg.Segmentation:
    """A BINARY SEG (PS3.3 C.8.20) of a (frames, rows, columns) label map, one segment per structure present.

    Segments are numbered 1..n in structure order, each labelled with its structure's name;
    a pixel lies in one segment only, since the map has one value per pixel.
    """
    present = [(value, name) for value, name in enumerate(described, start=1) if np.any(label_map == value)]
    stacked = np.stack([label_map == value for value, _ in present], axis=-1).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=described[name][0],
            segmented_property_type=described[name][1], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=described[name][2],
        )
        for number, (_, name) in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stacked, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=uid("seg-series"),
        series_number=_SEG_SERIES_NUMBER, sop_instance_uid=uid("seg-instance"), instance_number=1,
        manufacturer=_SOFTWARE[0], manufacturer_model_name=_SOFTWARE[1], software_versions=_SOFTWARE[2],
        device_serial_number="0", content_label="SYNTHETIC", content_description="fedmed synthetic lesions",
        series_description="fedmed synthetic segmentation",
    )
    # highdicom stamps the time of writing and a random Dimension Organization UID; the study's
    # own date and time and a seeded UID keep two runs byte-identical
    seg.InstanceCreationDate = seg.ContentDate = seg.SeriesDate = sources[0].StudyDate
    seg.InstanceCreationTime = seg.ContentTime = seg.SeriesTime = sources[0].StudyTime
    for item in seg.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{sources[0].StudyDate}{sources[0].StudyTime}"
    dimensions = uid("seg-dimensions")
    for item in list(seg.get("DimensionOrganizationSequence") or []) + list(seg.get("DimensionIndexSequence") or []):
        item.DimensionOrganizationUID = dimensions
    return seg


# --- 3-D -----------------------------------------------------------------------------------


def _write_ct_site(
    site_dir: Path, *, profile: CtSiteProfile, n_studies: int, slices: int, image_size: int, test_fraction: float,
    seed: int, structures: tuple[str, ...],
) -> SegmentationSite:
    name = site_dir.name
    rng = np.random.default_rng([seed, string.ascii_lowercase.index(name[-1]), 13])
    size = max(16, round(image_size * profile.size_scale))
    test = _draw_split(rng, n_studies, test_fraction)
    sexes, ages = _draw_patients(rng, n_studies, 62.0)
    scale, faint = _lesion_factors(rng, name, sexes, FEMALE_LESION_SCALE, FEMALE_LESION_CONTRAST)
    descriptions = _segment_descriptions(structures)
    rows, volumes = [], []
    for i in range(n_studies):
        hu, labels = _draw_ct_volume(rng, profile, size=size, slices=slices, scale=float(scale[i]),
                                     contrast=float(faint[i]), n_structures=len(structures))
        folder = f"studies/{i:04d}"
        (site_dir / folder).mkdir(exist_ok=True)
        uid = _uid_maker("fedmed-synth-ct-seg", seed, name, i)
        datasets = _ct_datasets(profile, hu, name=name, index=i, sex=str(sexes[i]), age=int(ages[i]), uid=uid)
        for ds in datasets:
            _write_bytes(site_dir / folder / f"{ds.SOPInstanceUID}.dcm", ds)
        mask = f"masks/{i:04d}.dcm"
        _write_bytes(site_dir / mask, _segmentation(datasets, labels, descriptions, uid=uid))
        rows.append((folder, mask, "test" if test[i] else "train"))
        volumes.append(int(np.count_nonzero(labels)))
    _write_manifest(site_dir, rows)
    return SegmentationSite(site_dir, tuple(r[0] for r in rows), tuple(volumes), tuple(str(s) for s in sexes))


def _draw_ct_volume(
    rng: np.random.Generator, profile: CtSiteProfile, *, size: int, slices: int, scale: float, contrast: float,
    n_structures: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One chest CT (slices, size, size) in HU, slice 0 the most cranial, and its label map."""
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
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for k in range(n_structures):
        side = rng.choice((-1.0, 1.0))
        # inside a lung (semi-axes 50 x 70 mm in-plane): an intrapulmonary nodule, lung all around it
        centre = (
            rng.uniform(-0.25, 0.25) * half_z, lung_y + rng.uniform(-25, 25), side * lung_dx + rng.uniform(-10, 10)
        )
        radius = rng.uniform(*_CT_LESION_RADIUS_MM) * scale * 0.85**k
        rho = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / f32(radius)
        hu = hu + f32(_CT_LESION_HU * (1 + 0.5 * k) * profile.contrast * contrast) * soft_step((1.0 - rho) / f32(_EDGE))
        labels[rho <= 1.0] = k + 1
    hu = hu + rng.standard_normal(hu.shape, dtype=f32) * f32(profile.noise_hu)
    return hu, labels


def _ct_datasets(
    profile: CtSiteProfile, hu: np.ndarray, *, name: str, index: int, sex: str, age: int, uid: Callable[[str], str],
) -> list[Dataset]:
    """One CT Image Storage dataset per slice, as `fedmed.data.synth_ct` writes them, with this synthesis' own ids."""
    site = name.upper()
    return ct_slice_datasets(
        profile, hu, uid, index=index, sex=sex, age=age, patient_name=f"{site}^CTSEG{index:04d}",
        patient_id=f"{site}-CTSEG-{index:04d}", accession=f"{site}-CS-{index:05d}", first_day=_STUDY_DAY0,
    )
