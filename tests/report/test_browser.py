"""report.html in a real browser: headless Chromium draws the heatmap colours and the figures.

CI installs Chromium (.ci/run); elsewhere the test is skipped when there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmed.report import metric_colour, render_report
from fedmed.report.plots import POOLED_COLOUR, SITE_COLOURS
from tests.report.conftest import FINDING


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.fixture()
def page_url(results: dict[str, Any], tmp_path: Path) -> str:
    page = tmp_path / "report.html"
    page.write_text(render_report(results), encoding="utf-8")
    return page.as_uri()


def packed(colour: str) -> int:
    """``#rrggbb`` as the integer 0xrrggbb, as pixel_counts keys it."""
    return int(colour[1:], 16)


def pixel_counts(pixels: np.ndarray) -> dict[int, int]:
    """How many pixels have each exact colour (keys 0xrrggbb)."""
    flat = pixels.astype(np.uint32)
    values, counts = np.unique((flat[..., 0] << 16) | (flat[..., 1] << 8) | flat[..., 2], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_screenshot_shows_heatmap_colours_and_figures(chromium: str, page_url: str, tmp_path: Path) -> None:
    import matplotlib.image

    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", page_url)
    pixels = np.round(matplotlib.image.imread(shot)[..., :3] * 255).astype(np.uint8)
    assert pixels.shape[:2] == (3000, 1200)
    counts = pixel_counts(pixels)

    not_white = (pixels < 245).any(axis=2).mean()
    assert not_white > 0.05, f"only {not_white:.1%} of the page is drawn"
    for auroc in (0.874, 0.652):  # federated and federated-without-site-a at site-a: one cell each
        assert counts.get(packed(metric_colour(auroc)), 0) > 2000, f"heatmap cell {auroc} not drawn"
    # Without the figures each site colour covers ~115 pixels (the summary's dots) and pooled's none.
    for line, least in [*((colour, 1000) for colour in SITE_COLOURS[:3]), (POOLED_COLOUR, 300)]:
        assert counts.get(packed(line), 0) > least, f"figure line {line} not drawn"


def test_dom_holds_the_findings(chromium: str, page_url: str, tmp_path: Path) -> None:
    dom = run_chromium(chromium, tmp_path, "--dump-dom", page_url).stdout
    assert "Findings" in dom and FINDING in dom
