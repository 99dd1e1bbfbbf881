"""`fedmed code-digest`: the digest a hospital lists in its policy to approve the code it reviewed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import fedmed
from fedmed.federation.runtime import project_root
from fedmed.secure.approval import code_digest


def print_code_digest(
    app: Annotated[
        Path | None,
        typer.Option(help="The Flower app's source (pyproject.toml, server/, client/), hashed as the bundle "
                    "`flwr run` ships; default: the source checkout's."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the digest as JSON.")] = False,
) -> None:
    """Print the digest of the installed fedmed and the Flower app's bundle, as a site checks it for every message."""
    app_dir = (app or project_root()).resolve()
    digest = code_digest(app_dir)
    package_dir = Path(fedmed.__file__).resolve().parent
    if as_json:
        report = {"digest": digest, "fedmed_version": fedmed.__version__,
                  "package_dir": str(package_dir), "app_dir": str(app_dir)}
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(digest)
    typer.echo(f"  fedmed {fedmed.__version__} at {package_dir}, Flower app at {app_dir}")
    typer.echo(
        "After reviewing this code, a hospital approves it by adding to its site policy:\n"
        f'  approved_code: ["{digest}"]'
    )
