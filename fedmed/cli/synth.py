"""`fedmed synth`: write demo hospitals of synthetic DICOM studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.data import synthesize_ct_hospitals, synthesize_hospitals


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per hospital into.")],
    sites: Annotated[int, typer.Option(min=1, max=26, help="Number of hospitals.")] = 3,
    images_per_site: Annotated[int, typer.Option(min=20, help="Studies per hospital.")] = 600,
    kind: Annotated[
        str, typer.Option(help="radiograph (one 2-D image per study) or ct-series (one file per CT slice).")
    ] = "radiograph",
    slices: Annotated[int, typer.Option(min=2, max=512, help="ct-series: slices per study.")] = 16,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
) -> None:
    """Write demo hospitals: real DICOM files with scanner differences and a planted bias."""
    if kind == "ct-series":
        paths = synthesize_ct_hospitals(out, n_sites=sites, studies_per_site=images_per_site, slices=slices, seed=seed)
    elif kind == "radiograph":
        paths = synthesize_hospitals(out, n_sites=sites, images_per_site=images_per_site, seed=seed)
    else:
        raise typer.BadParameter(f"unknown kind {kind!r}: use radiograph or ct-series", param_hint="--kind")
    Console().print(f"wrote {len(paths)} hospitals under {out}: {', '.join(p.name for p in paths)}")
