"""`fedmed report`: a run's results.json as report.html, one self-contained page for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmed.report import write_report


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with results.json (the --out of simulate or run).")],
) -> None:
    """Write RUN_DIR/report.html from RUN_DIR/results.json and print its path.

    The page needs no network and runs no script: open it in any browser, print it, or attach it.
    """
    typer.echo(write_report(run_dir))
