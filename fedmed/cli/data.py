"""`fedmed data check`: what a hospital's DICOM folder holds, and what cannot be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.data import check_folder, render_report

app = typer.Typer(help="Inspect a site's DICOM data.", no_args_is_help=True)


@app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="Any folder of DICOM files, searched recursively.")],
    manifest: Annotated[
        Path | None, typer.Option(help="Labels manifest (file,label,split); default FOLDER/labels.csv if present.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Decode every file, list the ones that fail and why, and summarise the rest."""
    report = check_folder(folder, manifest=manifest)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_report(report, Console())
