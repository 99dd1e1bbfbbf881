"""pydicom's own shipped test files, as real-world files nobody here wrote: each one reads or is
refused with a reason, and nothing reaches the terminal (fedmed.data.dicom, fedmed.data.logs)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fedmed.data.dicom import DicomReadError, read_dicom_image
from fedmed.data.logs import DIAGNOSTICS_LOGGER, LIBRARY_LOGGERS, capture_diagnostics, route_diagnostics

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"  # in the wheel: nothing downloaded
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

# Files whose outcome is known; the rest must merely read or be refused with a reason.
EXPECTED = {
    "MR_truncated.dcm": "pixel data is truncated",
    "JPEG2000-embedded-sequence-delimiter.dcm": "image too large",
    "rtplan.dcm": "no pixel data",
    "README.txt": "not a DICOM file",
    "zipMR.gz": "not a DICOM file",
    "badVR.dcm": "invalid image attributes",
}
MUST_READ = [
    "CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "examples_palette.dcm", "examples_ybr_color.dcm",
    "examples_jpeg2k.dcm", "GDCMJ2K_TextGBR.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm", "liver_1frame.dcm",
    "rtdose_rle.dcm", "ExplVR_BigEnd.dcm",
]


@pytest.fixture
def loud_root_logger():
    """A root handler on file descriptor 2 at WARNING, as `logging.basicConfig()` sets up: a
    pydicom record that propagated would show on stderr."""
    stream = open(2, "w", closefd=False)  # noqa: SIM115 - the handler writes to it until the fixture's teardown
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    yield
    root.removeHandler(handler)
    root.setLevel(level)
    stream.close()


def test_the_corpus_is_the_shipped_one() -> None:
    assert len(FILES) >= 150 and (CORPUS / "CT_small.dcm") in FILES


def test_every_file_reads_or_is_refused_with_a_reason(capfd, caplog, loud_root_logger) -> None:
    outcomes: dict[tuple[str, int], str] = {}
    for path in FILES:
        for channels in (1, 3):
            try:
                image = read_dicom_image(path, size=16, channels=channels)
            except DicomReadError as error:  # anything else fails the test
                assert error.reason and str(path) in str(error)
                outcomes[path.relative_to(CORPUS).as_posix(), channels] = error.reason
                continue
            assert image.shape == (channels, 16, 16) and image.dtype == np.float32
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
            outcomes[path.relative_to(CORPUS).as_posix(), channels] = "ok"
    assert len(outcomes) == 2 * len(FILES)  # every file accounted for, in both modes
    for name, reason in EXPECTED.items():
        assert outcomes[name, 1].startswith(reason) and outcomes[name, 3].startswith(reason), name
    for name in MUST_READ:
        assert outcomes[name, 1] == outcomes[name, 3] == "ok", (name, outcomes[name, 1])
    assert sum(o == "ok" for o in outcomes.values()) >= 2 * 85
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # no traceback, no log line, no native chatter
    assert not [r for r in caplog.records if r.name.split(".")[0] in LIBRARY_LOGGERS]


def run_check(folder: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from fedmed.cli.app import main; main()", "data", "check", str(folder), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "site"
    shutil.copytree(CORPUS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_data_check_prints_no_traceback_or_log_line(corpus_copy: Path) -> None:
    result = run_check(corpus_copy)
    assert result.returncode == 0, result.stderr  # a checkable folder exits 0 whatever its files hold
    assert result.stderr == ""
    assert "Traceback" not in result.stdout and "pydicom.pixels" not in result.stdout
    assert "skipped" in result.stdout and "--verbose prints them" in result.stdout


def test_data_check_verbose_shows_what_pydicom_said(corpus_copy: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "pydicom.log"
    result = run_check(corpus_copy, "--verbose", "--json", "--log-file", str(log_file))
    assert result.returncode == 0, result.stderr
    assert "MR_small_padded.dcm: pydicom: The pixel data is 8320 bytes long" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == log_file.read_text().splitlines()


class TestCapture:
    def test_records_and_warnings_are_collected_not_propagated(self, caplog) -> None:
        import warnings

        with caplog.at_level(logging.DEBUG), capture_diagnostics("f.dcm") as said:
            logging.getLogger("pydicom.pixels").warning("a plugin failed")
            warnings.warn("a pydicom warning", UserWarning, stacklevel=1)
            logging.getLogger("fedmed.other").warning("not pydicom's")
        assert said.messages == ["pydicom.pixels: a plugin failed", "UserWarning: a pydicom warning"]
        names = [r.name for r in caplog.records]
        assert "pydicom.pixels" not in names and "fedmed.other" in names  # other loggers untouched
        assert f"{DIAGNOSTICS_LOGGER}" in names  # re-logged, at DEBUG, on fedmed's logger

    def test_nothing_is_left_behind(self) -> None:
        before = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
                  for name in LIBRARY_LOGGERS}
        with pytest.raises(RuntimeError), capture_diagnostics("a"), capture_diagnostics("b"):
            raise RuntimeError("boom")
        with route_diagnostics(stream=sys.stdout):
            pass
        after = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
                 for name in LIBRARY_LOGGERS}
        assert after == before
        assert logging.getLogger(DIAGNOSTICS_LOGGER).handlers == []

    def test_nested_capture_hands_messages_outward(self) -> None:
        with capture_diagnostics("outer") as outer:
            with capture_diagnostics("inner") as inner:
                logging.getLogger("pydicom").warning("said inside")
            assert inner.messages == ["pydicom: said inside"]
        assert outer.messages == ["pydicom: said inside"]

    def test_logger_and_warning_copies_count_once(self) -> None:
        from pydicom.misc import warn_and_log

        with capture_diagnostics("f") as said:
            warn_and_log("once, twice")
        assert said.summary() == "pydicom: once, twice"
