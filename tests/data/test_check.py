"""Tests for fedmed.data.check: any folder, nested files, reasons, summaries and rendering."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from fedmed.data.check import (
    FileReport,
    FolderReport,
    age_band,
    check_folder,
    render_report,
)
from fedmed.data.synth import synthesize_hospitals
from fedmed.errors import DataError


@pytest.fixture(scope="module")
def source_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (site,) = synthesize_hospitals(
        tmp_path_factory.mktemp("check-source"), n_sites=1, images_per_site=6, image_size=16
    )
    return site


@pytest.fixture
def messy_folder(source_site: Path, tmp_path: Path) -> Path:
    """A good file at the top, a corrupt one and a text file in a nested folder, a hidden file."""
    files = sorted((source_site / "images").glob("*.dcm"))
    folder = tmp_path / "archive"
    nested = folder / "2024" / "ward-3"
    nested.mkdir(parents=True)
    shutil.copy(files[0], folder / "good.dcm")
    (nested / "broken.dcm").write_bytes(files[1].read_bytes()[:-500])
    (nested / "notes.txt").write_text("patient list, not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    return folder


def test_reports_each_file_with_reason(messy_folder: Path) -> None:
    report = check_folder(messy_folder)
    by_path = {f.path: f for f in report.files}
    assert set(by_path) == {"good.dcm", "2024/ward-3/broken.dcm", "2024/ward-3/notes.txt"}
    good = by_path["good.dcm"]
    assert good.ok and good.reason is None
    assert good.modality == "DX" and good.manufacturer == "Acme Imaging"
    assert good.sex in ("M", "F") and good.age_years is not None and good.label is None
    broken = by_path["2024/ward-3/broken.dcm"]
    assert not broken.ok and broken.reason == "pixel data is truncated"
    assert broken.manufacturer == "Acme Imaging"  # the header is still readable
    notes = by_path["2024/ward-3/notes.txt"]
    assert not notes.ok and notes.reason == "not a DICOM file"


def test_summary_counts(messy_folder: Path) -> None:
    summary = check_folder(messy_folder).summary()
    assert summary["total"] == 3 and summary["readable"] == 1 and summary["skipped"] == 2
    assert summary["skipped_reasons"] == {"pixel data is truncated": 1, "not a DICOM file": 1}
    assert summary["modalities"] == {"DX": 1}
    assert summary["manufacturers"] == {"Acme Imaging": 1}
    assert sum(summary["sex"].values()) == 1
    assert list(summary["age_bands"]) == ["<40", "40-59", "60-79", "80+", "unknown"]
    assert sum(summary["age_bands"].values()) == 1
    assert "labels" not in summary


def test_to_json_round_trips(messy_folder: Path) -> None:
    payload = check_folder(messy_folder).to_json()
    again = json.loads(json.dumps(payload))
    assert again == payload
    assert again["folder"] == str(messy_folder)
    assert {f["path"] for f in again["files"]} >= {"good.dcm"}
    assert again["summary"]["skipped"] == 2


def test_uses_the_site_manifest_for_labels(source_site: Path) -> None:
    report = check_folder(source_site)
    with open(source_site / "labels.csv", newline="") as handle:
        labels = {r["file"]: int(r["label"]) for r in csv.DictReader(handle)}
    assert {f.path: f.label for f in report.files} == labels  # labels.csv itself not listed
    summary = report.summary()
    assert summary["readable"] == 6
    assert summary["labels"] == {str(k): v for k, v in Counter(labels.values()).items()}


def test_explicit_manifest_elsewhere(source_site: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "my-labels.csv"
    shutil.copy(source_site / "labels.csv", manifest)
    report = check_folder(source_site, manifest=manifest)
    assert all(f.label in (0, 1) for f in report.files if f.path.endswith(".dcm"))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere does not exist"):
        check_folder(tmp_path / "nowhere")


def test_render_lists_problems_and_summary(messy_folder: Path) -> None:
    console = Console(record=True, width=200)
    render_report(check_folder(messy_folder), console)
    text = console.export_text()
    assert "2024/ward-3/broken.dcm" in text and "pixel data is truncated" in text
    assert "not a DICOM file" in text and "good.dcm" in text
    assert "3 files: 1 readable, 2 skipped" in text


def test_render_hides_ok_files_when_many(tmp_path: Path) -> None:
    report = FolderReport(folder="x")
    report.files = [FileReport(path=f"ok-{i}.dcm", ok=True) for i in range(60)]
    report.files.append(FileReport(path="[bad].dcm", ok=False, reason="not a DICOM file"))
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "ok-1.dcm" not in text and "[bad].dcm" in text
    assert "60 readable files not listed" in text


@pytest.mark.parametrize(
    "age, band",
    [(None, "unknown"), (0.5, "<40"), (39.9, "<40"), (40, "40-59"), (79, "60-79"), (80, "80+")],
)
def test_age_band(age: float | None, band: str) -> None:
    assert age_band(age) == band


def test_reports_each_series_as_a_volume_or_refused(tmp_path: Path) -> None:
    """Per series: modality, slices, spacing, orientation, photometric; a bad one with its problem."""
    from tests.data.dicom_series import write_series

    folder = tmp_path / "export"
    write_series(folder / "good", count=5, spacing=2.5, series_uid="1.2.3.10")
    write_series(folder / "gap", steps=[2.5, 2.5, 5.0, 2.5], series_uid="1.2.3.20", prefix="G")
    report = check_folder(folder)
    by_uid = {s.series_uid: s for s in report.series}
    good, gap = by_uid["1.2.3.10"], by_uid["1.2.3.20"]
    assert good.ok and good.modality == "CT" and good.slices == 5 and good.orientation == "axial"
    assert good.spacing_mm is not None and good.spacing_mm[0] == pytest.approx(2.5)
    assert good.photometric == "MONOCHROME2" and good.folder == "good"
    assert not gap.ok and [reason for reason, _ in gap.problems] == ["missing slice"]
    summary = report.summary()["series"]
    assert (summary["total"], summary["volumes"], summary["refused"]) == (2, 1, 1)
    assert summary["refused_reasons"] == {"missing slice": 1}
    assert all(f.ok for f in report.files)  # every file reads as an image; only the stack is wrong
    payload = json.loads(json.dumps(report.to_json()))
    assert payload == report.to_json() and {s["series_uid"] for s in payload["series"]} == {"1.2.3.10", "1.2.3.20"}
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "2 series: 1 volumes, 0 single images, 1 refused" in text and "missing slice" in text
