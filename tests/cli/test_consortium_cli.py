"""`fedmed provision` and `fedmed node start` from the command line: exit codes and messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml


def test_provision_creates_then_keeps(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    args = [
        "provision", str(tmp_path / "c"), "--sites", "site-a,site-b", "--server-host", "127.0.0.1", "--port", "9500"
    ]
    code, out, _ = fedmed(*args)
    assert code == 0 and "SuperLink at 127.0.0.1:9500" in out and "created the consortium CA" in out
    assert (tmp_path / "c" / "sites" / "site-b" / "supernode-auth.key").stat().st_mode & 0o777 == 0o600
    code, out, _ = fedmed(*args)
    assert code == 0 and "keeping the consortium CA" in out and "site site-a: keeping its keys" in out


def test_provision_refuses_a_bad_site_name(tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = fedmed("provision", str(tmp_path / "c"), "--sites", "Site A", "--server-host", "127.0.0.1")
    assert code == 2 and "site name 'Site A'" in err and "Traceback" not in out + err


def test_node_start_refuses_a_folder_without_images_before_connecting(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    fedmed("provision", str(tmp_path / "c"), "--sites", "site-a", "--server-host", "127.0.0.1")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"max_epsilon": 8, "delta": 1e-5, "max_grad_norm": 1, "min_noise_multiplier": 0.5})
    )
    empty = tmp_path / "data"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, out, err = fedmed("node", "start", "--site", "site-a",
         "--consortium", str(tmp_path / "c" / "sites" / "site-a"), "--data", str(empty), "--policy", str(policy))
    assert code == 2 and "no usable DICOM image" in err and "Traceback" not in out + err


def test_node_start_names_a_site_the_folder_lacks(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    fedmed("provision", str(tmp_path / "c"), "--sites", "site-a", "--server-host", "127.0.0.1")
    code, out, err = fedmed("node", "start", "--site", "site-q", "--consortium", str(tmp_path / "c"),
         "--data", str(tmp_path), "--policy", str(tmp_path / "p.yaml"))
    assert code == 2 and "no keys for site 'site-q'" in err


def test_node_start_refuses_a_policy_that_accepts_seeded_noise(
    tmp_path: Path, fedmed: Callable[..., tuple[int, str, str]]
) -> None:
    fedmed("provision", str(tmp_path / "c"), "--sites", "site-a", "--server-host", "127.0.0.1")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"max_epsilon": 8, "delta": 1e-5, "max_grad_norm": 1, "min_noise_multiplier": 0.5,
                                      "unsafe_accept_reproducible": True}))
    code, out, err = fedmed("node", "start", "--site", "site-a",
         "--consortium", str(tmp_path / "c" / "sites" / "site-a"), "--data", str(tmp_path), "--policy", str(policy))
    assert code == 2 and "unsafe_accept_reproducible is for simulations only" in err and "Traceback" not in out + err
