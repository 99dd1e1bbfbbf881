"""How fast a site reads its DICOM data: first decode and cached, per transfer syntax, and data vs DP training.

    python simulations/benchmark_loader.py [--images 200] [--studies 40] [--threads 2]

Three tables, each measured side by side in one run on this machine:
1. images/s through `load_site_data` for 2-D files (256x256, 12 bits) in each transfer
   syntax pydicom can write here: a first, cold read (decode + resize + cache write) and a
   cached one (hash + cache read);
2. volumes/s for CT series (one file per slice), uncompressed and compressed;
3. the share of one epoch spent on data (a cached load) against one DP-SGD epoch of the
   quickstart networks on the same records (goal: under 10 % once cached).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from tables import Section, console, show, to_markdown  # simulations/, the script's folder

SYNTAXES = {
    "Explicit VR Little Endian": ExplicitVRLittleEndian,
    "Deflated Explicit VR": DeflatedExplicitVRLittleEndian,
    "RLE Lossless": RLELossless,
    "JPEG-LS Lossless": JPEGLSLossless,
    "JPEG 2000 Lossless": JPEG2000Lossless,
}


def recode(folder: Path, syntax: str) -> None:
    """Rewrite every DICOM file under `folder` in transfer syntax `syntax`."""
    for path in folder.rglob("*.dcm"):
        ds = dcmread(path)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)


def timed_loads(site: Path, spec, cache: Path) -> tuple[float, float, int]:
    from fedmed.data import load_site_data

    started = time.perf_counter()
    data = load_site_data(site, spec=spec, cache_dir=cache)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    load_site_data(site, spec=spec, cache_dir=cache)
    warm = time.perf_counter() - started
    assert not data.skipped, data.skipped[:3]
    return cold, warm, len(data.train) + len(data.test)


def image_table(root: Path, images: int) -> Section:
    from fedmed.config import InputConfig
    from fedmed.data import synthesize_hospitals

    (source,) = synthesize_hospitals(root / "images-source", n_sites=1, images_per_site=images, image_size=256)
    rows = []
    for name, syntax in SYNTAXES.items():
        site = root / f"images-{syntax}"
        shutil.copytree(source, site)
        recode(site, syntax)
        megabytes = sum(p.stat().st_size for p in site.rglob("*.dcm")) / 1e6
        cold, warm, count = timed_loads(site, InputConfig(image_size=64), root / f"cache-{syntax}")
        rows.append([name, f"{megabytes:.1f}", f"{count / cold:.0f}", f"{count / warm:.0f}", f"{cold / warm:.1f}x"])
    return Section(
        title=f"2-D images through load_site_data ({images} files, 256x256, 12 bits, resized to 64x64)",
        headers=["transfer syntax", "MB on disk", "first read, images/s", "cached, images/s", "cached speed-up"],
        rows=rows,
        notes=["first read: header, decode, windowing, resize, cache write; cached: file hash and cache read"],
    )


def volume_table(root: Path, studies: int) -> Section:
    from fedmed.config import InputConfig, SampleUnit, VolumeConfig
    from fedmed.data import synthesize_ct_hospitals

    (source,) = synthesize_ct_hospitals(root / "ct-source", n_sites=1, studies_per_site=studies, slices=16)
    spec = InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=(16, 32, 32), window=(-600.0, 1500.0)))
    rows = []
    for name, syntax in SYNTAXES.items():
        if syntax == DeflatedExplicitVRLittleEndian:
            continue
        site = root / f"ct-{syntax}"
        shutil.copytree(source, site)
        recode(site, syntax)
        cold, warm, count = timed_loads(site, spec, root / f"ct-cache-{syntax}")
        rows.append([name, f"{count / cold:.1f}", f"{count / warm:.1f}", f"{count * 16 / cold:.0f}", f"{cold / warm:.1f}x"])
    return Section(
        title=f"CT series through load_site_data ({studies} studies x 16 slices of 48x48, to 16x32x32)",
        headers=["transfer syntax", "first read, volumes/s", "cached, volumes/s", "first read, slices/s", "cached speed-up"],
        rows=rows,
        notes=["cached still reads every slice's header to group and check the series, then hashes the files"],
    )


def share_table(root: Path) -> Section:
    """One cached load against one DP-SGD epoch on the same records, for the quickstart setups."""
    from fedmed.config import InputConfig, PrivacyConfig, SampleUnit, VolumeConfig
    from fedmed.data import load_site_data
    from fedmed.models import create_model
    from fedmed.privacy import plan_privacy, train_private
    from fedmed.privacy.randomness import SecureRandomness

    setups = [
        ("2-D quickstart", root / f"images-{ExplicitVRLittleEndian}", InputConfig(image_size=64), "small_cnn", 64,
         root / f"cache-{ExplicitVRLittleEndian}"),
        ("3-D quickstart", root / f"ct-{ExplicitVRLittleEndian}",
         InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=(16, 32, 32), window=(-600.0, 1500.0))),
         "small_cnn_3d", 32, root / f"ct-cache-{ExplicitVRLittleEndian}"),
    ]
    rows = []
    for name, site, spec, model_name, batch, cache in setups:
        started = time.perf_counter()
        data = load_site_data(site, spec=spec, cache_dir=cache)
        load = time.perf_counter() - started
        model = create_model(model_name, spec=spec)
        plan = plan_privacy(
            PrivacyConfig(target_epsilon=8.0, delta=1e-5), site="bench", n_train=len(data.train),
            batch_size=batch, local_epochs=1, rounds=1,
        )
        started = time.perf_counter()
        train_private(
            model, data.train.as_torch_dataset(), plan, history=[], epochs=1, learning_rate=0.1,
            randomness=SecureRandomness(), device=torch.device("cpu"),
        )
        train = time.perf_counter() - started
        share = load / (load + train)
        rows.append([name, str(len(data.train)), f"{load:.2f}", f"{train:.2f}", f"{100 * share:.0f} %"])
    return Section(
        title="Share of an epoch spent on data once cached (one cached load_site_data vs one DP-SGD epoch)",
        headers=["setup", "train records", "cached load, s", "DP epoch, s", "data share"],
        rows=rows,
        notes=["a site loads its data once per message (round), then trains local_epochs epochs on it"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fedmed-loader-") as tmp:
        root = Path(tmp)
        sections = [image_table(root, args.images), volume_table(root, args.studies), share_table(root)]
        for section in sections:
            show(section)
    console.print("\n\n".join(to_markdown(section) for section in sections), markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
