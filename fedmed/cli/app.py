"""The `fedmed` command line: typer wiring only, one module per command."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedmed.cli import approval, audit, consortium, data, models, report, simulate, synth
from fedmed.errors import FedmedError

app = typer.Typer(
    name="fedmed",
    help="Federated training of medical imaging models with differential privacy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("simulate")(simulate.simulate)
app.command("synth")(synth.synth)
app.command("models")(models.list_models)
app.command("audit")(audit.audit)
app.command("report")(report.report)
app.command("code-digest")(approval.print_code_digest)
app.command("provision")(consortium.provision_consortium)
app.command("run")(consortium.run)
app.add_typer(consortium.server_app, name="server")
app.add_typer(consortium.node_app, name="node")
app.add_typer(data.app, name="data")

USAGE_ERROR = 2
"""Exit code for a user's mistake (bad config, missing data): fix the input and rerun."""


def main() -> None:
    """Entry point: a user's mistake prints one clear message and exits 2, no traceback."""
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except FedmedError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(USAGE_ERROR)
    except typer.Abort:
        Console(stderr=True).print("aborted")
        sys.exit(130)
    except Exception as error:  # click's usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(USAGE_ERROR)
        raise
    sys.exit(code if isinstance(code, int) else 0)
