"""`fedmed audit`: verify sites' privacy ledgers and recompute their epsilon independently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.errors import FedmedError
from fedmed.privacy.audit import audit_path, render_audit


def parse_public_keys(items: list[str]) -> dict[str, Path]:
    """``["SITE=PEMFILE", ...]`` as a mapping; FedmedError on a malformed or repeated item."""
    keys: dict[str, Path] = {}
    for item in items:
        site, sep, pem = item.partition("=")
        site, pem = site.strip(), pem.strip()
        if not sep or not site or not pem:
            raise FedmedError(f"--public-key {item!r}: expected SITE=PEMFILE, e.g. --public-key site-a=site-a.pub")
        if site in keys:
            raise FedmedError(f"--public-key: site {site!r} is given twice")
        keys[site] = Path(pem)
    return keys


def audit(
    path: Annotated[
        Path, typer.Argument(help="A run folder (with ledgers/<site>.jsonl) or one ledger file (X.jsonl).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON.")] = False,
    public_key: Annotated[
        list[str] | None,
        typer.Option(
            "--public-key",
            help="SITE=PEMFILE: the public key the site published (repeatable); "
            "default <ledger>.pub beside each ledger.",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="The consortium's key manifest (consortium-keys.json) to verify every site against; "
            "default for a run folder: the one its results.json records.",
        ),
    ] = None,
) -> None:
    """Check each site's ledger (chain, signatures, budget, delta) and recompute epsilon with dp_accounting.

    A ledger checked only against the key beside it is reported as unverified, not passed.
    Exit code 0 when every site passes, 1 when any fails or is unverified, 2 when the input is unusable.
    """
    report = audit_path(path, public_keys=parse_public_keys(public_key or []), manifest=manifest)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_audit(report, Console())
    if report.verdict != "pass":
        raise typer.Exit(1)
