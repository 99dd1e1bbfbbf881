"""The `fedmed` command line: typer wiring only, one module per command.

A command's module is imported when that command runs (or ``--help`` lists it), not when
``fedmed`` starts: ``fedmed audit`` runs on an auditor's machine with neither torch nor
Opacus, which the training commands' modules import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from fedmed.errors import FedmedError

COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("fedmed.cli.simulate", "simulate"),
    "synth": ("fedmed.cli.synth", "synth"),
    "models": ("fedmed.cli.models", "list_models"),
    "audit": ("fedmed.cli.audit", "audit"),
    "report": ("fedmed.cli.report", "report"),
    "code-digest": ("fedmed.cli.approval", "print_code_digest"),
    "provision": ("fedmed.cli.consortium", "provision_consortium"),
    "run": ("fedmed.cli.consortium", "run"),
    "server": ("fedmed.cli.consortium", "server_app"),
    "node": ("fedmed.cli.consortium", "node_app"),
    "data": ("fedmed.cli.data", "app"),
}
"""Each command (or group of commands, a Typer) by name: its module and attribute, in help order."""


def load_command(name: str) -> click.Command:
    """The click command for ``fedmed NAME``, its module imported now.

    A third-party dependency that cannot be imported (torch on an auditor's machine) gives
    a command that says so when run, and that ``--help`` lists as unavailable, rather than
    a traceback.
    """
    module, attribute = COMMANDS[name]
    try:
        target = getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        package = (error.name or "").partition(".")[0]
        if package == "fedmed":
            raise  # fedmed's own code is missing or broken, not a dependency
        if isinstance(error, ModuleNotFoundError) and package:
            return _unavailable(name, f"needs {package}, which is not installed here")
        return _unavailable(name, f"cannot import a dependency here ({error})")
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


def _unavailable(name: str, reason: str) -> click.Command:
    def refuse() -> NoReturn:
        raise FedmedError(
            f"`fedmed {name}` {reason}; install fedmed with its dependencies (`pip install -e .`) "
            "to use it (`fedmed audit` needs only dp-accounting)"
        )

    return click.Command(
        name, callback=refuse, help=f"(not available here: {reason})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands: a name in :data:`COMMANDS` is loaded on first lookup, then kept."""

    def __init__(self, eager: MutableMapping[str, click.Command] | None = None) -> None:
        self._loaded: dict[str, click.Command] = dict(eager or {})

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._loaded if name not in COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS) + sum(name not in COMMANDS for name in self._loaded)


class LazyGroup(TyperGroup):
    """The ``fedmed`` group, its commands in a :class:`LazyCommands`."""

    def __init__(self, *args: Any, commands: MutableMapping[str, click.Command] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(commands)


app = typer.Typer(
    name="fedmed",
    help="Federated training of medical imaging models with differential privacy.",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _fedmed() -> None:
    """Nothing to do before a command; typer needs a callback for a group whose commands it does not see."""


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
        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(USAGE_ERROR)
        raise
    sys.exit(code if isinstance(code, int) else 0)
