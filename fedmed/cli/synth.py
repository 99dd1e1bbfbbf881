"""`fedmed synth`: write demo hospitals of synthetic DICOM studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedmed.config import SynthesisConfig
from fedmed.data.demo import KINDS, synthesize_demo
from fedmed.errors import FedmedError


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per hospital into.")],
    sites: Annotated[int, typer.Option(min=1, max=26, help="Number of hospitals.")] = 3,
    images_per_site: Annotated[int, typer.Option(min=20, help="Studies per hospital.")] = 600,
    kind: Annotated[
        str, typer.Option(help=(
            "radiograph (one 2-D image per study, one label), ct-series (one file per CT slice), multilabel "
            "(radiographs with several findings), multiclass (radiographs with one class each), segmentation "
            "(images with DICOM SEG masks) or ct-segmentation."
        ))
    ] = "radiograph",
    slices: Annotated[int, typer.Option(min=2, max=512, help="ct-series and ct-segmentation: slices per study.")] = 16,
    size: Annotated[
        int | None, typer.Option(min=32, max=1024, help="Stored matrix of site-a (default per kind).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
) -> None:
    """Write demo hospitals: real DICOM files with scanner differences and a planted bias."""
    if kind not in KINDS:
        raise typer.BadParameter(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}", param_hint="--kind")
    default_size = {"ct-series": 48, "ct-segmentation": 48, "segmentation": 64}.get(kind, 96)
    settings = SynthesisConfig(
        kind=kind, images_per_site=images_per_site, slices=slices, stored_size=size or default_size, seed=seed,
    )
    try:
        paths = synthesize_demo(out, settings, n_sites=sites)
    except FedmedError as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    Console().print(f"wrote {len(paths)} hospitals under {out}: {', '.join(p.name for p in paths)}")
