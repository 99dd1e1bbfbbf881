"""`fedmed code-digest`: prints what a site computes, and how a hospital approves it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fedmed.cli.app import main
from fedmed.federation.runtime import project_root, stage_app
from fedmed.secure.approval import code_digest


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fedmed", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_prints_the_digest_a_site_computes_and_the_policy_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["code-digest"], monkeypatch, capsys)
    digest = code_digest()
    assert code == 0
    assert out.splitlines()[0] == digest
    assert f'approved_code: ["{digest}"]' in out and "After reviewing this code" in out


def test_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["code-digest", "--json"], monkeypatch, capsys)
    report = json.loads(out)
    assert code == 0
    assert report["digest"] == code_digest()
    assert report["app_dir"] == str(project_root())


def test_another_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    app = stage_app(tmp_path / "bundle")
    (app / "client" / "app.py").write_text("# reviewed elsewhere\n", encoding="utf-8")
    code, out, _ = run_cli(["code-digest", "--app", str(app)], monkeypatch, capsys)
    assert code == 0 and out.splitlines()[0] == code_digest(app) != code_digest()


def test_a_folder_that_is_no_app_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["code-digest", "--app", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "not a Flower app" in err
