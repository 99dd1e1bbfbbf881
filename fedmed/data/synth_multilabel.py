"""Synthetic multi-label and multi-class hospitals: chest radiographs that show findings.

Why: a multi-label task (each image may show several findings, each its own yes/no) and a
multi-class task (each image shows exactly one class) need data whose findings are known,
each with a sign a network can learn, read through the same DICOM path as the binary
hospitals (fedmed.data.synth: the same scanner profiles, vendor tags, rescale, windows,
MONOCHROME1 at site-b).

Each site folder holds `images/<SOPInstanceUID>.dcm` and `labels.csv`. Multi-label
(`synthesize_multilabel_hospitals`): the header `file,split,<label1>,<label2>,...` and 0/1
values. Multi-class (`synthesize_multiclass_hospitals`): the header `file,split,label` and the
class name, one of `CLASSES` (``normal``: no finding; else the one finding the image shows).
The findings (`FINDINGS`) and their signs,
drawn on the binary synthesizer's anatomy (two dark lung fields, ribs, a spine band, smooth
low-frequency variation, pixel noise) plus a heart:

- ``nodule``: a bright round blob (radius 5-8 % of the width) in the upper or middle zone of a lung;
- ``effusion``: a bright band filling the base of one or both lungs, its top a meniscus
  rising towards the chest wall (the blunted costophrenic angle of a pleural effusion);
- ``cardiomegaly``: an enlarged central heart shadow. Every image has a heart; a normal one
  spans about a third of the chest's width, an enlarged one more than half (the
  cardiothoracic ratio above 0.5 that defines cardiomegaly on a PA film).

Multi-label: findings are drawn independently, each with exactly round(prevalence * n)
positives per site (`FINDING_PREVALENCE`, which differs by site). The test split is stratified
by the combination of findings, then repaired so every label has both classes in both splits.
Multi-class: each site has exact class counts from its shares (`CLASS_SHARES`, which differ by
site), and a test split stratified by class with every class in both splits.

Planted bias (on purpose, for subgroup analyses to find): at site-b, effusions in female
patients are drawn at 35-45 % of the site's normal contrast (`FEMALE_EFFUSION_CONTRAST`);
the other findings, and every other site, are unbiased.

Everything is a function of `seed`; each synthesizer draws from a random stream and a UID
namespace of its own, so UIDs never collide with the binary synthesizer's or each other's for
the same seed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fedmed.data.synth import (
    BIASED_SITE,
    SITE_PROFILES,
    SiteProfile,
    check_site_dir,
    draw_labels,
    image_dataset,
    low_frequency,
    site_names,
    soft_step,
    to_stored,
)
from fedmed.errors import FedmedError, did_you_mean

__all__ = [
    "BIASED_FINDING",
    "CLASSES",
    "CLASS_SHARES",
    "FEMALE_EFFUSION_CONTRAST",
    "FINDINGS",
    "FINDING_PREVALENCE",
    "synthesize_multiclass_hospitals",
    "synthesize_multilabel_hospitals",
]

FINDINGS = ("nodule", "effusion", "cardiomegaly")
"""The findings with a visual sign; ``labels`` chooses among them and their column order."""

FINDING_PREVALENCE: tuple[dict[str, float], ...] = (
    {"nodule": 0.20, "effusion": 0.30, "cardiomegaly": 0.25},
    {"nodule": 0.30, "effusion": 0.40, "cardiomegaly": 0.20},
    {"nodule": 0.15, "effusion": 0.25, "cardiomegaly": 0.35},
    {"nodule": 0.25, "effusion": 0.20, "cardiomegaly": 0.30},
)
"""Per site profile (site-a, site-b, ...; cycled like SITE_PROFILES), the fraction of positives."""

CLASSES = ("normal", *FINDINGS)
"""The multi-class classes: ``normal`` (no finding) or the one finding an image shows."""

CLASS_SHARES: tuple[dict[str, float], ...] = (
    {"normal": 0.40, "nodule": 0.20, "effusion": 0.25, "cardiomegaly": 0.15},
    {"normal": 0.30, "nodule": 0.25, "effusion": 0.30, "cardiomegaly": 0.15},
    {"normal": 0.45, "nodule": 0.15, "effusion": 0.15, "cardiomegaly": 0.25},
    {"normal": 0.35, "nodule": 0.25, "effusion": 0.20, "cardiomegaly": 0.20},
)
"""Per site profile (cycled like SITE_PROFILES), each class's share of the multi-class images;
renormalised over the classes asked for."""

BIASED_FINDING = "effusion"
FEMALE_EFFUSION_CONTRAST = (0.35, 0.45)
"""At BIASED_SITE, female patients' effusions are drawn at this fraction of the site's contrast."""

_NODULE_RADIUS = (0.05, 0.08)  # fraction of image width
_NODULE_AMPLITUDE = 0.45
_EFFUSION_AMPLITUDE = 0.30  # fluid fills back most of the lung's 0.28 darkening
_EFFUSION_HEIGHT = (0.25, 0.40)  # fraction of the lung's height, from its base
_HEART_AMPLITUDE = 0.20
_HEART_HALF_WIDTH = {False: (0.09, 0.12), True: (0.17, 0.21)}  # fraction of width: normal, enlarged
_STUDY_DAY0 = dt.date(2024, 3, 4)
_CHUNK = 64
_UID_NAMESPACE = "fedmed-synth-multilabel"
_MULTICLASS_UID_NAMESPACE = "fedmed-synth-multiclass"
_MULTILABEL_STREAM, _MULTICLASS_STREAM = 2, 5  # apart from the other synthesizers' (synth_ct 3, synth_seg 11, 13)


def synthesize_multilabel_hospitals(
    root: Path,
    *,
    n_sites: int = 3,
    images_per_site: int = 400,
    image_size: int = 96,
    test_fraction: float = 0.25,
    seed: int = 0,
    labels: Sequence[str] = FINDINGS,
    overwrite: bool = False,
) -> list[Path]:
    """Write `n_sites` multi-label hospital folders under `root` and return their paths.

    Sites cycle through fedmed.data.synth's `SITE_PROFILES` (scanner) and `FINDING_PREVALENCE`.
    `image_size` is site-a's matrix; other sites scale it. A finding left out of `labels` is
    never drawn (its heart stays normal, for cardiomegaly). `overwrite` as in
    `synthesize_hospitals`.

    Raises:
        FedmedError: an argument out of range, or a label that is not one of `FINDINGS`.
        DataError: a site folder already holds files and `overwrite` is False.
    """
    labels = _check_labels(labels)
    site_dirs = _site_dirs(
        root, n_sites=n_sites, images_per_site=images_per_site, minimum=4 * len(labels),
        why=f"a positive and a negative of each of {len(labels)} labels in train and test",
        image_size=image_size, test_fraction=test_fraction, overwrite=overwrite,
    )
    with pydicom_config.disable_value_validation():  # valid by construction; halves the time
        for index, site_dir in enumerate(site_dirs):
            _clear_site_dir(site_dir)
            rng = _site_rng(seed, site_dir.name, _MULTILABEL_STREAM)
            prevalence = FINDING_PREVALENCE[index % len(FINDING_PREVALENCE)]
            present = np.zeros((images_per_site, len(FINDINGS)), dtype=bool)
            for label in labels:
                present[:, FINDINGS.index(label)] = draw_labels(rng, images_per_site, prevalence[label]) == 1
            columns = [FINDINGS.index(label) for label in labels]
            test = _draw_test_split(rng, present[:, columns], test_fraction)
            _write_site(
                site_dir, rng, name=site_dir.name, profile=SITE_PROFILES[index % len(SITE_PROFILES)],
                present=present, test=test, header=labels, cells=present[:, columns].astype(int).tolist(),
                image_size=image_size, seed=seed, namespace=_UID_NAMESPACE, tag="ML",
            )
    return site_dirs


def synthesize_multiclass_hospitals(
    root: Path,
    *,
    n_sites: int = 3,
    images_per_site: int = 400,
    image_size: int = 96,
    test_fraction: float = 0.25,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    overwrite: bool = False,
) -> list[Path]:
    """Write `n_sites` multi-class hospital folders under `root` and return their paths.

    Each image shows exactly one of `classes`: ``normal`` (no finding) or one finding of
    `FINDINGS`. Each site has exact counts from its `CLASS_SHARES` (renormalised over
    `classes`, at least two images per class) and a test split stratified by class with every
    class in both splits. The manifest is ``file,split,label`` with the class name. Sites,
    `image_size` and `overwrite` as in `synthesize_multilabel_hospitals`.

    Raises:
        FedmedError: an argument out of range, or a class that is not one of `CLASSES`.
        DataError: a site folder already holds files and `overwrite` is False.
    """
    classes = _check_classes(classes)
    site_dirs = _site_dirs(
        root, n_sites=n_sites, images_per_site=images_per_site, minimum=2 * len(classes),
        why=f"one image of each of {len(classes)} classes in train and test",
        image_size=image_size, test_fraction=test_fraction, overwrite=overwrite,
    )
    with pydicom_config.disable_value_validation():  # valid by construction; halves the time
        for index, site_dir in enumerate(site_dirs):
            _clear_site_dir(site_dir)
            rng = _site_rng(seed, site_dir.name, _MULTICLASS_STREAM)
            shares = CLASS_SHARES[index % len(CLASS_SHARES)]
            counts = _class_counts([shares[name] for name in classes], images_per_site)
            drawn = rng.permutation(np.repeat(np.arange(len(classes)), counts))
            one_hot = np.eye(len(classes), dtype=bool)[drawn]
            present = np.zeros((images_per_site, len(FINDINGS)), dtype=bool)
            for column, name in enumerate(classes):
                if name in FINDINGS:
                    present[:, FINDINGS.index(name)] = one_hot[:, column]
            _write_site(
                site_dir, rng, name=site_dir.name, profile=SITE_PROFILES[index % len(SITE_PROFILES)],
                present=present, test=_draw_test_split(rng, one_hot, test_fraction), header=("label",),
                cells=[[classes[c]] for c in drawn], image_size=image_size, seed=seed,
                namespace=_MULTICLASS_UID_NAMESPACE, tag="MC",
            )
    return site_dirs


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise FedmedError(f"labels must be a sequence of finding names, not the string {labels!r}; e.g. ({labels!r},)")
    labels = tuple(labels)
    unknown = [f"{label!r}{did_you_mean(label, FINDINGS)}" for label in labels if label not in FINDINGS]
    if unknown:
        raise FedmedError(f"unknown finding {', '.join(unknown)}; findings with a visual sign: {', '.join(FINDINGS)}")
    if not labels or len(set(labels)) != len(labels):
        raise FedmedError(f"labels must name each finding once, at least one; got {labels}")
    return labels


def _site_dirs(
    root: Path, *, n_sites: int, images_per_site: int, minimum: int, why: str, image_size: int,
    test_fraction: float, overwrite: bool,
) -> list[Path]:
    """The site folders to write, once every argument and every folder has been checked."""
    site_names(n_sites)
    if images_per_site < minimum:
        raise FedmedError(f"images_per_site must be at least {minimum} ({why}), got {images_per_site}")
    if image_size < 16:
        raise FedmedError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise FedmedError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    site_dirs = [Path(root) / name for name in site_names(n_sites)]
    for site_dir in site_dirs:  # refuse before writing anything
        check_site_dir(site_dir, overwrite=overwrite)
    return site_dirs


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        raise FedmedError(
            f"classes must be a sequence of class names, not the string {classes!r}; e.g. ('normal', {classes!r})"
        )
    classes = tuple(classes)
    unknown = [f"{name!r}{did_you_mean(name, CLASSES)}" for name in classes if name not in CLASSES]
    if unknown:
        raise FedmedError(f"unknown class {', '.join(unknown)}; classes the synthesizer draws: {', '.join(CLASSES)}")
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise FedmedError(f"classes must name each class once; repeated: {', '.join(repeated)}")
    if len(classes) < 2:
        raise FedmedError(f"classes must name at least 2 classes, e.g. ('normal', 'effusion'); got {classes}")
    return classes


def _class_counts(shares: Sequence[float], n: int) -> np.ndarray:
    """Exact counts summing to `n` in proportion to `shares` (largest remainder), at least 2 each."""
    wanted = np.asarray(shares, dtype=np.float64) / sum(shares) * n
    counts = np.floor(wanted).astype(np.int64)
    for index in np.argsort(counts - wanted, kind="stable")[: n - counts.sum()]:  # largest remainders first
        counts[index] += 1
    while (counts < 2).any():  # one for each split: taken from the largest class
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts


def _site_rng(seed: int, name: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, string.ascii_lowercase.index(name[-1]), stream])


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
    rng: np.random.Generator,
    *,
    name: str,
    profile: SiteProfile,
    present: np.ndarray,
    test: np.ndarray,
    header: Sequence[str],
    cells: Sequence[Sequence[object]],
    image_size: int,
    seed: int,
    namespace: str,
    tag: str,
) -> None:
    """Draw and write the images showing `present` (n, len(FINDINGS)) and the manifest.

    The manifest is ``file,split,*header``, each row ending in that image's `cells`; the
    patients (sex, age) and the planted bias are drawn here, from `rng`, after the caller's labels.
    """
    n_images = len(present)
    size = max(16, round(image_size * profile.size_scale))
    sexes = np.where(rng.random(n_images) < 0.5, "F", "M")
    ages = np.clip(np.round(rng.normal(58.0, 16.0, n_images)), 18, 95).astype(int)
    contrast = np.full((n_images, len(FINDINGS)), profile.contrast)
    if name == BIASED_SITE:
        faint = rng.uniform(*FEMALE_EFFUSION_CONTRAST, n_images)
        effusion = FINDINGS.index(BIASED_FINDING)
        contrast[:, effusion] = np.where(sexes == "F", contrast[:, effusion] * faint, contrast[:, effusion])

    rows = []
    for start in range(0, n_images, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, n_images))
        units = _draw_radiographs(rng, size, present[chunk], contrast[chunk], profile.noise)
        for offset, pixels in enumerate(to_stored(units, profile)):
            i = start + offset
            ds = _build_dataset(
                profile, name=name, index=i, seed=seed, size=size, sex=str(sexes[i]), age=int(ages[i]), pixels=pixels,
                namespace=namespace, tag=tag,
            )
            relative = f"images/{ds.SOPInstanceUID}.dcm"
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            (site_dir / relative).write_bytes(buffer.getvalue())
            rows.append([relative, "test" if test[i] else "train", *cells[i]])
    with open(site_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "split", *header])
        writer.writerows(rows)


def _draw_test_split(rng: np.random.Generator, present: np.ndarray, fraction: float) -> np.ndarray:
    """Stratified by combination of findings, then repaired: every label has both classes in both splits."""
    n = len(present)
    keys = present.astype(np.int64) @ (1 << np.arange(present.shape[1]))
    test = np.zeros(n, dtype=bool)
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        count = min(len(members) - 1, round(fraction * len(members)))
        if count > 0:
            test[rng.choice(members, size=count, replace=False)] = True
    for _ in range(3):  # a move for one label can empty a cell of another: look again
        moved = False
        for column in present.T:
            for value in (False, True):
                cell = column == value
                for to_test in (True, False):
                    here = test if to_test else ~test
                    movable = np.flatnonzero(cell & ~here)
                    if not (cell & here).any() and len(movable) >= 2:  # the other split keeps one
                        test[rng.choice(movable)] = to_test
                        moved = True
        if not moved:
            break
    return test


def _draw_radiographs(
    rng: np.random.Generator, size: int, present: np.ndarray, contrast: np.ndarray, noise: float
) -> np.ndarray:
    """Unit-intensity PA chest images (n, size, size) showing the findings in `present` (n, 3)."""
    f32 = np.float32
    n = len(present)
    axis = ((np.arange(size) + 0.5) / size).astype(f32)
    yy, xx = axis[None, :, None], axis[None, None, :]

    def draw(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1)).astype(f32)

    def column(finding: str) -> np.ndarray:
        return present[:, FINDINGS.index(finding), None, None]

    def strength(finding: str) -> np.ndarray:
        return contrast[:, FINDINGS.index(finding), None, None].astype(f32)

    # Anatomy as fedmed.data.synth draws it (copied: there it is private and also draws the
    # binary lesion), keeping each lung's geometry for the findings.
    images = 0.62 + low_frequency(rng, n, size, grid=5) * f32(0.05)
    lung_y, lung_dx = draw(0.46, 0.54), draw(0.17, 0.23)
    half_h, half_w = draw(0.26, 0.34), draw(0.11, 0.15)
    centres = (0.5 - lung_dx, 0.5 + lung_dx)
    lungs = []
    for centre_x in centres:
        ellipse = ((yy - lung_y) / half_h) ** 2 + ((xx - centre_x) / half_w) ** 2
        lung = soft_step((1.0 - ellipse) * f32(8.0))
        ribs = f32(0.04) * np.sin(f32(2 * np.pi) * (yy * draw(6.0, 8.0) + draw(0.0, 1.0)))
        images -= lung * (f32(0.28) - ribs)
        lungs.append(lung)
    images += f32(0.08) * np.exp(-(((xx - draw(0.48, 0.52)) / f32(0.05)) ** 2))

    # Heart: always there; wider than half the chest with cardiomegaly.
    enlarged = column("cardiomegaly")
    low = np.where(enlarged, _HEART_HALF_WIDTH[True][0], _HEART_HALF_WIDTH[False][0])
    high = np.where(enlarged, _HEART_HALF_WIDTH[True][1], _HEART_HALF_WIDTH[False][1])
    heart_w = (low + (high - low) * rng.random((n, 1, 1))).astype(f32)
    heart_y, heart_h = lung_y + draw(0.08, 0.12), draw(0.10, 0.13)
    heart = ((yy - heart_y) / heart_h) ** 2 + ((xx - (0.5 + draw(0.01, 0.04))) / heart_w) ** 2
    images += f32(_HEART_AMPLITUDE) * strength("cardiomegaly") * soft_step((1.0 - heart) * f32(6.0))

    # Effusion: fluid fills a lung's base up to a meniscus that rises towards the chest wall.
    sides = rng.integers(0, 3, (n, 1, 1))  # 0: right lung, 1: left, 2: both
    for side, (centre_x, lung) in enumerate(zip(centres, lungs, strict=True)):
        level = lung_y + half_h * (1.0 - 2.0 * draw(*_EFFUSION_HEIGHT))
        meniscus = level - f32(0.25) * half_h * np.abs(xx - centre_x) / half_w
        fluid = lung * soft_step((yy - meniscus) / f32(0.015))
        affected = column("effusion") & ((sides == side) | (sides == 2))
        images += f32(_EFFUSION_AMPLITUDE) * strength("effusion") * affected * fluid

    # Nodule: a bright round blob in the upper or middle zone of one lung.
    left = rng.random((n, 1, 1)) < 0.5
    centre_x = np.where(left, centres[1], centres[0]) + draw(-0.5, 0.5) * half_w
    centre_y = lung_y + draw(-0.6, 0.2) * half_h
    radius = draw(*_NODULE_RADIUS)
    amplitude = f32(_NODULE_AMPLITUDE) * strength("nodule") * draw(0.85, 1.15) * column("nodule")
    distance = np.sqrt((yy - centre_y) ** 2 + (xx - centre_x) ** 2)
    images += amplitude * soft_step((radius - distance) / (f32(0.12) * radius))
    images += rng.standard_normal((n, size, size), dtype=f32) * f32(noise)
    return images.astype(f32)


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
    namespace: str,
    tag: str,
) -> Dataset:
    """fedmed.data.synth's image, its UIDs in `namespace` and pseudonyms marked `tag`."""

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[namespace, str(seed), name, str(index), kind])

    site = name.upper()
    return image_dataset(
        profile, uid, index=index, size=size, sex=sex, age=age, pixels=pixels,
        patient_name=f"{site}^{tag}{index:04d}", patient_id=f"{site}-{tag}{index:04d}",
        accession=f"{site}-{tag}ACC-{index:05d}", first_day=_STUDY_DAY0,
    )
