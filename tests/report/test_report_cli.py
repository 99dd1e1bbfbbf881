"""`fedmed report RUN_DIR`: writes report.html and prints its path; an unusable folder is one line, no traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import fedmed  # noqa: F401  (the in-process runner fixture)


def test_report_writes_the_page_and_prints_its_path(
    results: dict[str, Any], tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]  # noqa: F811
) -> None:
    (tmp_path / "results.json").write_text(json.dumps(results))
    code, out, err = fedmed("report", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.strip() == str(tmp_path / "report.html")
    assert "chest-xray-demo" in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("folder", ["no-such-run", "empty-run"])
def test_report_on_an_unusable_folder_is_one_line(
    folder: str, tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]  # noqa: F811
) -> None:
    (tmp_path / "empty-run").mkdir()
    code, out, err = fedmed("report", str(tmp_path / folder))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and str(tmp_path / folder) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
