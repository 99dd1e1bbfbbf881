"""How fast a site reads its DICOM data: first decode and cached, per transfer syntax, and data vs DP training.

    python simulations/benchmark_loader.py [--images 200] [--studies 40] [--threads 2]

Three tables, each measured side by side in one run on this machine:
1. images/s through `load_site_data` for 2-D files (256x256, 12 bits) in each transfer
   syntax pydicom can write here: a first, cold read (decode + resize + cache write) and a
   cached one (hash + cache read);
2. volumes/s for CT series (one file per slice), uncompressed and compressed;
3. the share of time spent on data (a cached load) against DP-SGD of the quickstart networks
   on sites of the quickstarts' sizes (goal: under 10 % once cached).
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
        rows.append(
            [name, f"{count / cold:.1f}", f"{count / warm:.1f}", f"{count * 16 / cold:.0f}", f"{cold / warm:.1f}x"]
        )
    return Section(
        title=f"CT series through load_site_data ({studies} studies x 16 slices of 48x48, to 16x32x32)",
        headers=[
            "transfer syntax", "first read, volumes/s", "cached, volumes/s", "first read, slices/s", "cached speed-up"
        ],
        rows=rows,
        notes=[
            "cached: the grouping is found under the files' names, sizes and times, "
            "the volume under a hash of their bytes"
        ],
    )


def share_table(root: Path) -> Section:
    """One cached load against one DP-SGD epoch on the same records, at the quickstarts' sizes."""
    from fedmed.config import load_config
    from fedmed.data import load_site_data, synthesize_ct_hospitals, synthesize_hospitals
    from fedmed.models import create_model
    from fedmed.privacy import plan_privacy, train_private
    from fedmed.privacy.randomness import SecureRandomness
    from fedmed.tasks import create_task

    configs = Path(__file__).resolve().parents[1] / "configs"
    flat, volumes = load_config(configs / "quickstart.yaml"), load_config(configs / "quickstart-3d.yaml")
    (flat_site,) = synthesize_hospitals(
        root / "share-2d", n_sites=1, images_per_site=flat.data.synthesize.images_per_site, image_size=96
    )
    (ct_site,) = synthesize_ct_hospitals(
        root / "share-3d", n_sites=1, studies_per_site=volumes.data.synthesize.images_per_site,
        slices=volumes.data.synthesize.slices, image_size=volumes.data.synthesize.stored_size,
    )
    rows = []
    for name, site, config in (("2-D quickstart", flat_site, flat), ("3-D quickstart", ct_site, volumes)):
        spec = config.data.input_only()
        load_site_data(site, spec=spec, cache_dir=root / f"cache-{name}")  # fills the cache, untimed
        started = time.perf_counter()
        data = load_site_data(site, spec=spec, cache_dir=root / f"cache-{name}")
        load = time.perf_counter() - started
        model = create_model(config.model.name, spec=spec)
        plan = plan_privacy(
            config.privacy, site="bench", n_train=len(data.train), batch_size=config.training.batch_size,
            local_epochs=config.training.local_epochs, rounds=config.training.rounds,
        )
        started = time.perf_counter()
        train_private(
            model, data.train.as_torch_dataset(), plan, loss=create_task(config.task).loss, history=[], epochs=1,
            learning_rate=config.training.learning_rate, momentum=config.training.momentum,
            randomness=SecureRandomness(), device=torch.device("cpu"),
        )
        epoch = time.perf_counter() - started
        per_round = load / (load + config.training.local_epochs * epoch)
        rows.append([
            name, str(len(data.train)), f"{load:.2f}", f"{epoch:.2f}", f"{100 * load / (load + epoch):.0f} %",
            f"{100 * per_round:.0f} % ({config.training.local_epochs} epochs)",
        ])
    return Section(
        title="Share of time spent on data once cached (one cached load_site_data vs DP-SGD on the same records)",
        headers=["setup", "train records", "cached load, s", "DP epoch, s", "data share of an epoch", "of a round"],
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
