"""`fedmed data check`: what a hospital's DICOM folder holds, and what cannot be read."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.data import check_folder, render_report
from fedmed.data.logs import route_diagnostics

app = typer.Typer(help="Inspect a site's DICOM data.", no_args_is_help=True)


@app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="Any folder of DICOM files, searched recursively.")],
    manifest: Annotated[
        Path | None, typer.Option(help="Labels manifest (file,label,split); default FOLDER/labels.csv if present.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Also print, on stderr, what pydicom and its decoders said about each file."),
    ] = False,
    log_file: Annotated[
        Path | None, typer.Option(help="Append what pydicom and its decoders said about each file to this file.")
    ] = None,
) -> None:
    """Decode every file, list the ones that fail and why, and summarise the rest.

    Exits 0 when the folder could be checked, whatever its files hold (the report says
    which are skipped); 2 when the folder or manifest cannot be used.
    """
    with route_diagnostics(stream=sys.stderr if verbose else None, path=log_file) as said:
        report = check_folder(folder, manifest=manifest)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    console = Console()
    render_report(report, console)
    if said.count and not verbose:
        where = f" (in {log_file})" if log_file else ""
        console.print(
            f"pydicom and its decoders logged {said.count} messages{where}; --verbose prints them.", markup=False
        )
