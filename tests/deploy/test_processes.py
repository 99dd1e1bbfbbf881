"""`fedmed server start` and `fedmed node start` stop when told, and their Flower processes with them.

Real processes on 127.0.0.1: the CLI as a hospital's supervisor runs it, stopped by SIGTERM
(a container stop, systemd, ``kill PID``) or killed outright (SIGKILL), after which no
SuperLink, SuperNode or SuperExec of theirs may live on, and a stopped node has left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fedmed.data import synthesize_hospitals
from fedmed.deploy.provision import Consortium, provision
from fedmed.deploy.superlink import SuperLink
from fedmed.federation.runtime import free_port
from tests.deploy.processes import flower_processes

FEDMED = [sys.executable, "-m", "fedmed"]


def start(args: list[str], ready: str, *, cwd: Path) -> subprocess.Popen[str]:
    """Run a fedmed command until it prints ``ready``."""
    process = subprocess.Popen([*FEDMED, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if ready in line:
            return process
    process.wait()
    raise AssertionError(f"{args[:2]} exited ({process.returncode}) before '{ready}':\n{''.join(seen)}")


def gone(marker: Path, *, within: float = 20.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := flower_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    root = tmp_path_factory.mktemp("processes")
    consortium = provision(root / "consortium", sites=["site-a"], server_host="127.0.0.1", port=free_port(),
                           announce=lambda _: None)
    synthesize_hospitals(root / "data", n_sites=1, images_per_site=20, image_size=32, seed=2)
    (root / "policy.yaml").write_text(yaml.safe_dump(
        {"max_epsilon": 5.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5}), encoding="utf-8")
    return consortium


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_server_stops_with_its_flower_processes(consortium: Consortium, stop: signal.Signals) -> None:
    relative = os.path.relpath(consortium.root, consortium.root.parent)  # the guide's relative path works
    server = start(["server", "start", relative], "SuperLink listening on 127.0.0.1", cwd=consortium.root.parent)
    assert flower_processes(consortium.root)
    server.send_signal(stop)
    assert server.wait(timeout=60) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    assert gone(consortium.root) == []


@pytest.fixture(scope="module")
def link(consortium: Consortium) -> Iterator[SuperLink]:
    with SuperLink(consortium) as running:
        yield running


def node_status(link: SuperLink) -> list[str]:
    listed = json.loads(link.connection().flwr("supernode", "list", "--format", "json").stdout)
    return [node["status"] for node in listed["nodes"]]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_node_stops_with_its_flower_processes_and_leaves(
    link: SuperLink, stop: signal.Signals, tmp_path: Path
) -> None:
    root = link.consortium.root.parent
    state = tmp_path / "state"
    node = start(
        ["node", "start", "--site", "site-a", "--consortium", str(link.consortium.site("site-a")),
         "--data", str(root / "data" / "site-a"), "--policy", str(root / "policy.yaml"), "--state", str(state)],
        "joined the SuperLink", cwd=tmp_path,
    )
    assert "online" in node_status(link) and flower_processes(state)
    node.send_signal(stop)
    node.wait(timeout=60)
    assert gone(state) == []
    deadline = time.monotonic() + 30
    while "online" in node_status(link) and time.monotonic() < deadline:
        time.sleep(1)
    assert "online" not in node_status(link)


def test_a_runtime_port_in_use_is_named_with_its_flag(link: SuperLink, tmp_path: Path) -> None:
    root = link.consortium.root.parent
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*FEDMED, "node", "start", "--site", "site-a", "--consortium", str(link.consortium.site("site-a")),
             "--data", str(root / "data" / "site-a"), "--policy", str(root / "policy.yaml"),
             "--state", str(tmp_path / "state"), "--runtime-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 2
    assert f"local port {port} (--runtime-port) is already in use" in done.stderr.replace("\n", " ")
    assert "Traceback" not in done.stdout + done.stderr
