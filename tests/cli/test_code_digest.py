"""`fedmed code-digest`: prints what a site computes, and how a hospital approves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedmed.app_bundle import project_root, stage_app
from fedmed.secure.approval import code_digest


def test_prints_the_digest_a_site_computes_and_the_policy_line(
    fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, _ = fedmed("code-digest")
    digest = code_digest()
    assert code == 0
    assert out.splitlines()[0] == digest
    assert f'approved_code: ["{digest}"]' in out and "After reviewing this code" in out


def test_json(fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = fedmed("code-digest", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["digest"] == code_digest()
    assert report["app_dir"] == str(project_root())


def test_another_app(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    app = stage_app(tmp_path / "bundle")
    (app / "client" / "app.py").write_text("# reviewed elsewhere\n", encoding="utf-8")
    code, out, _ = fedmed("code-digest", "--app", str(app))
    assert code == 0 and out.splitlines()[0] == code_digest(app) != code_digest()


def test_a_folder_that_is_no_app_exits_2(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = fedmed("code-digest", "--app", str(tmp_path))
    assert code == 2 and "not a Flower app" in err
