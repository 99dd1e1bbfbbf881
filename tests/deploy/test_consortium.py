"""A real consortium on 127.0.0.1: one SuperLink and SuperNodes with TLS and node authentication.

Every process is real (flower-superlink, flower-supernode, a flwr-clientapp per message)
and is started and stopped by the fixtures; the last check is that none is left. A
deployed round is slow (each message starts a fresh ClientApp process, and both sides
poll every 3 s), so the federations are tiny and the cases share one SuperLink.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedmed.config import load_config
from fedmed.data import synthesize_hospitals
from fedmed.deploy.provision import provision
from fedmed.deploy.run import run_on_consortium
from fedmed.deploy.superlink import SuperLink
from fedmed.deploy.supernode import SiteFolder, SuperNode
from fedmed.federation import runtime
from fedmed.federation.recorder import PROGRESS_FILE
from fedmed.federation.runtime import FlowerRuntimeError, RunStatus, _descendants, free_port
from fedmed.secure.approval import code_digest

SITES = ["site-a", "site-b", "site-c", "site-d", "site-e"]


def write_policy(path: Path, *, approved: str) -> Path:
    policy = {
        "max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
        "approved_code": [approved],
    }
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


def write_experiment(path: Path, data: Path, sites: list[str]) -> Path:
    config = {
        "name": "deployed",
        "data": {"root": str(data), "sites": sites, "image_size": 16},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.5, "min_sites": 2},
        "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
    }  # secure aggregation is on by default
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class World:
    """The consortium folder, the hospitals' data and policies, and the SuperLink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.consortium = provision(root / "consortium", sites=SITES, server_host="127.0.0.1", port=free_port(),
                                    announce=lambda _: None)
        self.data = root / "data"
        synthesize_hospitals(self.data, n_sites=len(SITES), images_per_site=60, image_size=32, seed=5)
        self.approving = write_policy(root / "policy.yaml", approved=code_digest())
        self.refusing = write_policy(root / "other-policy.yaml", approved="sha256:" + "0" * 64)
        self.nodes: dict[str, SuperNode] = {}

    def node(self, site: str, *, folder: Path | None = None, policy: Path | None = None) -> SuperNode:
        state = self.root / "state" / site
        state.mkdir(parents=True, exist_ok=True)
        return SuperNode(
            SiteFolder.find(folder or self.consortium.root, site), data_dir=self.data / site,
            policy=policy or self.approving, state_dir=state, cache_dir=self.root / "cache", runtime_port=free_port(),
            log_path=self.root / f"{site}-{time.monotonic_ns()}.log",
        )

    def run(
        self, name: str, sites: list[str], on_event: Callable[[dict], None] = lambda _: None
    ) -> tuple[RunStatus, dict]:
        path = write_experiment(self.root / f"{name}.yaml", self.data, sites)
        status, results = run_on_consortium(
            load_config(path), path, self.root / name, self.consortium, on_event=on_event
        )
        assert results is not None, f"{status}: see {self.root / name / 'flower.log'}"
        return status, results


def flower_processes() -> list[str]:
    names = []
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "flower-" in command or "flwr" in command:
                names.append(command[:120])
    return names


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("consortium"))
    with SuperLink(world.consortium, bind="127.0.0.1") as link, contextlib.ExitStack() as nodes:
        world.link = link
        world.stack = nodes
        for site in SITES[:3]:
            world.nodes[site] = nodes.enter_context(world.node(site))
        yield world
    assert flower_processes() == [], "Flower processes outlived the consortium"


# ------------------------------------------------------------------------------- the round trip


@pytest.fixture(scope="module")
def first_run(world: World) -> dict:
    status, results = world.run("run-1", SITES[:3])
    assert status.completed, status
    return results


def test_two_rounds_with_dp_and_secure_aggregation_pass_the_audit(world: World, first_run: dict) -> None:
    assert first_run["status"] == "completed", first_run["status_reason"]
    assert first_run["kind"] == "deployment"  # and nothing of a simulation in its record
    assert "simulation" not in first_run["config"] and "root" not in first_run["config"]["data"]
    for record in first_run["rounds"]:
        assert record["secure_aggregation"]["sites"] == SITES[:3]
        assert record["failures"] == []
    assert all(first_run["sites"][s]["rounds_trained"] == 2 for s in SITES[:3])
    # the end-of-run evaluation crossed the real SuperLink too, and small groups stayed at the sites
    evaluation = first_run["evaluation"]
    for site in SITES[:3]:
        assert evaluation["matrix"]["global"][site]["n"] == first_run["sites"][site]["n_test"]
        ages = evaluation["subgroups"][site]["attributes"]["age_band"]["groups"].values()
        assert {"suppressed": True} in list(ages)
    audited = subprocess.run(
        [sys.executable, "-m", "fedmed", "audit", str(world.root / "run-1"), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert json.loads(audited.stdout)["verdict"] == "pass"


def test_each_site_keeps_its_books_on_its_own_disk(world: World, first_run: dict) -> None:
    for site in SITES[:3]:
        ledger = world.root / "state" / site / "ledger.jsonl"
        assert len(ledger.read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- who may connect


def test_a_node_with_an_unregistered_key_is_refused(world: World, tmp_path: Path) -> None:
    folder = tmp_path / "site-a"
    shutil.copytree(world.consortium.site("site-a"), folder, ignore=shutil.ignore_patterns("state"))
    (folder / "supernode-auth.key").unlink()
    stranger = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    (folder / "supernode-auth.key").write_bytes(stranger)
    os.chmod(folder / "supernode-auth.key", 0o600)
    with pytest.raises(FlowerRuntimeError, match="does not know this site's key: it is not registered"):
        world.node("site-a", folder=folder).start()


def test_a_node_without_the_consortium_ca_cannot_connect(world: World, tmp_path: Path) -> None:
    other = provision(tmp_path / "other", sites=["site-a"], server_host="127.0.0.1", announce=lambda _: None)
    folder = tmp_path / "site-a"
    shutil.copytree(world.consortium.site("site-a"), folder, ignore=shutil.ignore_patterns("state"))
    shutil.copyfile(other.ca_cert, folder / "ca.crt")
    with pytest.raises(FlowerRuntimeError, match="not signed by this site's ca.crt"):
        world.node("site-a", folder=folder).start()


# ------------------------------------------------------------- a site that goes, one that refuses


def test_a_killed_node_and_an_unapproved_app_leave_the_rest_to_finish(world: World, first_run: dict) -> None:
    """site-c dies after its first training round; site-e never approved this code.

    Four sites train, so that one may drop: secure aggregation needs t > 2n/3 of them.
    """
    world.nodes["site-d"] = world.stack.enter_context(world.node("site-d"))
    world.nodes["site-e"] = world.stack.enter_context(world.node("site-e", policy=world.refusing))
    progress = world.root / "run-2" / PROGRESS_FILE

    def kill_site_c_after_round_one(event: dict) -> None:
        if event["event"] == "train" and event["round"] == 1 and world.nodes["site-c"].running:
            world.nodes["site-c"].kill()

    status, results = world.run("run-2", SITES, on_event=kill_site_c_after_round_one)
    assert progress.exists()
    assert results["status"] == "completed", results["status_reason"]
    first, second = results["rounds"]
    assert "site-c" in first["sites"] and "site-c" not in second["sites"]
    assert first["secure_aggregation"]["sites"] == ["site-a", "site-b", "site-d"]  # recovered without site-c
    assert second["secure_aggregation"]["sites"] == ["site-a", "site-b", "site-d"]
    refusals = [f["reason"] for f in first["failures"] if f["stage"] == "train"]
    assert len(refusals) == 1 and "site site-e refuses to run: the hospital has not approved this code" in refusals[0]


def test_a_bundle_the_hospitals_did_not_review_never_runs_at_a_site(
    world: World, first_run: dict, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coordinator ships a changed ClientApp: every site's guard refuses it before importing it."""
    marker = world.root / "the-bundle-ran-at-a-site"
    real_stage_app = runtime.stage_app

    def tampered(destination: Path) -> Path:
        app = real_stage_app(destination)
        client = app / "client" / "app.py"
        client.write_text(
            f"open({str(marker)!r}, 'w').close()\n" + client.read_text(encoding="utf-8"), encoding="utf-8"
        )
        return app

    monkeypatch.setattr(runtime, "stage_app", tampered)
    sites = ["site-a", "site-b", "site-d"]
    status, results = world.run("run-tampered", sites)
    assert results["status"] == "stopped" and "only 0 site(s) completed train" in results["status_reason"]
    reasons = [f["reason"] for f in results["rounds"][0]["failures"]]
    assert len(reasons) == 4  # every connected node (site-e approves nothing anyway)
    assert all("the hospital has not approved this code" in r for r in reasons)
    assert not marker.exists()
