"""The command line: a user's mistake exits 2 with one message naming the file or key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmed.data import synthesize_hospitals

GOOD_CONFIG = """\
name: t
data: {{root: {root}, sites: [site-a]}}
training: {{rounds: 1}}
privacy: {{target_epsilon: 1.0}}
"""



@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\n  data: [\n", "line 2"),
        ("name: t\ndata: {root: d, sites: [a]}\ntraining: {rounds: 1, epochz: 2}\nprivacy: {target_epsilon: 1}\n",
         "training.epochz: unknown key"),
        ("name: t\ndata: {root: d, sites: [a]}\ntraining: {rounds: many}\nprivacy: {target_epsilon: 1}\n",
         "training.rounds: Input should be a valid integer"),
        ("name: t\ndata: {root: d, sites: [a]}\nmodel: {name: resnet}\n"
         "training: {rounds: 1}\nprivacy: {target_epsilon: 1}\n",
         "unknown model 'resnet'"),
    ],
    ids=["malformed-yaml", "unknown-key", "wrong-type", "unknown-model"],
)
def test_bad_config_exits_2_naming_file_and_key(
    text: str, expected: str, tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text(text)
    code, out, err = fedmed("simulate", str(config), "--out", str(tmp_path / "out"))
    assert code == 2
    assert str(config) in err and expected in err
    assert "Traceback" not in out + err


def test_missing_config_file_exits_2(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = fedmed("simulate", str(tmp_path / "nope.yaml"), "--out", str(tmp_path))
    assert code == 2 and "nope.yaml: config file not found" in err


def test_missing_data_folder_exits_2_with_the_fix(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text(GOOD_CONFIG.format(root="no-such-folder"))
    code, _, err = fedmed("simulate", str(config), "--out", str(tmp_path / "out"))
    assert code == 2
    assert str(tmp_path / "no-such-folder") in err and "data.synthesize" in err


def test_missing_site_folder_exits_2_naming_the_site(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    (tmp_path / "hospitals").mkdir()
    config = tmp_path / "experiment.yaml"
    config.write_text(GOOD_CONFIG.format(root="hospitals"))
    code, _, err = fedmed("simulate", str(config), "--out", str(tmp_path / "out"))
    assert code == 2 and "site(s) site-a" in err


def test_data_check_json_lists_bad_files_and_summarises(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    synthesize_hospitals(tmp_path, n_sites=1, images_per_site=20, image_size=32)
    site = tmp_path / "site-a"
    broken = sorted((site / "images").glob("*.dcm"))[0]
    broken.write_bytes(broken.read_bytes()[:300])
    code, out, _ = fedmed("data", "check", str(site), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["summary"]["total"] == 20 and report["summary"]["skipped"] == 1
    assert [f["path"] for f in report["files"] if not f["ok"]] == [f"images/{broken.name}"]
    assert report["summary"]["manufacturers"]


def test_data_check_on_a_missing_folder_exits_2(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = fedmed("data", "check", str(tmp_path / "absent"))
    assert code == 2 and "absent" in err


def test_synth_writes_the_demo_hospitals(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = fedmed("synth", str(tmp_path), "--sites", "2", "--images-per-site", "20")
    assert code == 0 and "site-a, site-b" in out
    assert (tmp_path / "site-b" / "labels.csv").is_file()


def test_models_lists_the_registry(fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = fedmed("models")
    assert code == 0 and "densenet121" in out and "small_cnn" in out
