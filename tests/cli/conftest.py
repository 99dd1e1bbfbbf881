"""Run the `fedmed` command in process, as a user would from a shell."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NamedTuple

import pytest

from fedmed.cli.app import main


class Outcome(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture()
def fedmed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """``fedmed("audit", "runs/x")``: exit code and captured output of one command."""

    def run(*args: str) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["fedmed", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return Outcome(exited.value.code, captured.out, captured.err)

    return run
