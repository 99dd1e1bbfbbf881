"""Secure aggregation through the real ServerApp and ClientApp code, with a spy on the wire.

The federations run on LoopbackGrid: Flower's message serialisation and the real apps,
without the engine's start-up cost, so a test can watch every reply the server receives
and make a site vanish at an exact step. The real engine runs secure aggregation in
test_simulation.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from fedmed.config import load_config
from fedmed.data import synthesize_hospitals
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import Key
from fedmed.federation.secure_rounds import MESSAGE_TYPE, RECORD, UPDATE, Field, begin_round, site_step
from fedmed.federation.server import run_federation
from fedmed.federation.simulation import prepare_site_keys
from fedmed.models import create_model, float_state
from fedmed.secure.ring import RING, SCALE
from fedmed.secure.secagg import SecureAggregationError

SITES = ["site-a", "site-b", "site-c"]
NODES = {10 + i: site for i, site in enumerate(SITES)}
NODE_OF = {site: node for node, site in NODES.items()}


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(root, n_sites=3, images_per_site=60, image_size=32, seed=3)
    return root


class Run:
    """One federation on LoopbackGrid; everything the server received is in ``received``."""

    def __init__(
        self, folder: Path, hospitals: Path, *, secure: bool, require: bool = False,
        drop_at_mask: tuple[str, ...] = (), manifest: bool = True, **training: object,
    ) -> None:
        folder.mkdir()
        policy = {
            "max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
            "require_secure_aggregation": require,
        }
        (folder / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
        config = {
            "name": "loopback",
            "data": {"root": str(hospitals), "sites": SITES, "image_size": 16, "cache_dir": str(folder.parent / "cache")},
            "training": {
                "rounds": 1, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.5, "min_sites": 2, **training,
            },
            "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
            "secure_aggregation": {"enabled": secure},
            "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
        }
        path = folder / "experiment.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.config = load_config(path)
        written = prepare_site_keys(self.config)
        if not manifest:
            written.unlink()
        self.out = folder / "out"
        self.received: list[Message] = []
        self.sent: list[Message] = []
        dropped_nodes = {NODE_OF[site] for site in drop_at_mask}

        def drop(message: Message) -> bool:
            self.sent.append(message)
            return (
                message.metadata.message_type == MESSAGE_TYPE
                and message.content[RECORD][Field.STAGE] == "mask"
                and message.metadata.dst_node_id in dropped_nodes
            )

        grid = LoopbackGrid(
            client_app, {node: {Key.PARTITION_ID: i} for i, node in enumerate(NODES)},
            run_config={Key.CONFIG_PATH: str(path), Key.OUT_DIR: str(self.out)},
            drop=drop, received=self.received,
        )
        torch.set_num_threads(1)
        run_federation(grid, grid.server_context)
        self.results = json.loads((self.out / "results.json").read_text(encoding="utf-8"))

    def model(self) -> dict[str, torch.Tensor]:
        return torch.load(self.out / "model.pt")["state_dict"]

    def train_replies(self) -> dict[str, Message]:
        return {
            str(m.content[Key.SITE][Key.SITE_ID]): m
            for m in self.received
            if m.metadata.message_type == "train" and not m.has_error()
        }


def initial_model(run: Run) -> dict[str, torch.Tensor]:
    torch.manual_seed(run.config.training.seed)  # as the ServerApp builds it
    return float_state(create_model(run.config.model.name, image_size=run.config.data.image_size))


def weighted_mean(plain: Run, sites: list[str]) -> dict[str, torch.Tensor]:
    replies = plain.train_replies()
    weights = {s: int(replies[s].content[Key.METRICS][Key.NUM_EXAMPLES]) for s in sites}
    arrays = {s: replies[s].content[Key.ARRAYS].to_torch_state_dict() for s in sites}
    total = sum(weights.values())
    return {name: sum(weights[s] * arrays[s][name] for s in sites) / total for name in arrays[sites[0]]}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@pytest.fixture(scope="module")
def plain(hospitals: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("plain") / "run", hospitals, secure=False)


@pytest.fixture(scope="module")
def secure(hospitals: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("secure") / "run", hospitals, secure=True, require=True)


# --------------------------------------------------------------------- the sum, and only the sum


def test_the_secure_aggregate_matches_plain_fedavg(plain: Run, secure: Run) -> None:
    assert secure.results["status"] == "completed"
    round_one = secure.results["rounds"][0]
    assert round_one["secure_aggregation"]["sites"] == SITES
    assert round_one["secure_aggregation"]["dropped"] == []
    assert round_one["secure_aggregation"]["threshold"] == 2
    # same seeds, same data: the sites trained the same updates in both runs
    assert max_difference(secure.model(), plain.model()) < 1e-6
    assert max_difference(secure.model(), initial_model(secure)) > 1e-3  # and the model moved


def test_the_server_receives_no_site_update_in_the_clear(plain: Run, secure: Run) -> None:
    """Every array the ServerApp received is a masked vector that does not resemble any site's update."""
    start = initial_model(secure)
    names = sorted(start)
    deltas = {}
    for site, reply in plain.train_replies().items():
        update = reply.content[Key.ARRAYS].to_torch_state_dict()
        deltas[site] = np.concatenate([(update[n] - start[n]).numpy().ravel() for n in names])
    arrays = [(m, name, record) for m in secure.received if not m.has_error() for name, record in m.content.array_records.items()]
    assert arrays, "the spy saw no arrays at all"
    for message, record_name, record in arrays:
        assert record_name == UPDATE and message.metadata.message_type == MESSAGE_TYPE
        for array in record.values():
            vector = array.numpy()
            assert vector.dtype == RING and vector.size == deltas["site-a"].size + 1
            naive = vector[:-1].view(np.int32) / SCALE
            for delta in deltas.values():
                assert abs(np.corrcoef(naive, delta)[0, 1]) < 0.1
                assert not np.allclose(naive / max(np.abs(naive).max(), 1), delta, atol=1e-6)
    assert all(Key.ARRAYS not in m.content for m in secure.received if not m.has_error())


def test_fedprox_composes_with_secure_aggregation(hospitals: Path, tmp_path: Path) -> None:
    fedprox = {"strategy": "fedprox", "proximal_mu": 0.5, "rounds": 2}
    plain = Run(tmp_path / "plain", hospitals, secure=False, **fedprox)
    secure = Run(tmp_path / "secure", hospitals, secure=True, **fedprox)
    assert [r["secure_aggregation"]["sites"] for r in secure.results["rounds"]] == [SITES, SITES]
    assert max_difference(secure.model(), plain.model()) < 1e-6


# --------------------------------------------------------------------------------- dropouts


def test_a_site_that_vanishes_mid_round_is_recovered(plain: Run, hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, drop_at_mask=("site-b",))
    summary = run.results["rounds"][0]["secure_aggregation"]
    assert run.results["status"] == "completed"
    assert summary["sites"] == ["site-a", "site-c"] and summary["dropped"] == ["site-b"]
    assert max_difference(run.model(), weighted_mean(plain, ["site-a", "site-c"])) < 1e-6


def test_too_many_vanishing_abandons_the_round_and_reveals_nothing(hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, drop_at_mask=("site-b", "site-c"))
    summary = run.results["rounds"][0]["secure_aggregation"]
    assert "only 1 site(s) sent masked inputs, fewer than the secure-aggregation threshold 2" in summary["abandoned"]
    assert "nothing was unmasked" in summary["abandoned"]
    stages = {m.content[RECORD][Field.STAGE] for m in run.sent if m.metadata.message_type == MESSAGE_TYPE}
    assert stages == {"share", "mask"}  # never asked anyone to confirm or reveal
    assert max_difference(run.model(), initial_model(run)) == 0.0  # the model stays as it was


def test_a_site_whose_policy_requires_secure_aggregation_refuses_a_plain_run(hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=False, require=True)
    assert run.results["status"] == "stopped"
    reasons = [f["reason"] for f in run.results["rounds"][0]["failures"]]
    assert len(reasons) == 3
    assert all("the policy requires secure aggregation, which the run turns off" in r for r in reasons)
    assert all(Key.ARRAYS not in m.content for m in run.received if not m.has_error())


def test_without_a_key_manifest_the_run_stops_before_training(hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, manifest=False)
    assert run.results["status"] == "stopped"
    assert "consortium-keys.json: no consortium key manifest here" in run.results["status_reason"]
    assert run.received == []


# ------------------------------------------------------------------------- replayed messages


def secagg_message(run_id: int, server_round: int, stage: str = "share") -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 0
    record = ConfigRecord({Field.STAGE: stage, Field.ROUND: server_round, Field.ADVERTS: [], Field.THRESHOLD: 2})
    return Message(RecordDict({RECORD: record}), 10, MESSAGE_TYPE)


@pytest.mark.parametrize(("run_id", "server_round"), [(7, 2), (8, 3)], ids=["earlier-round", "other-run"])
def test_a_step_from_another_run_or_round_is_rejected(run_id: int, server_round: int) -> None:
    state = RecordDict()
    key = Ed25519PrivateKey.generate()
    begin_round(state, site="site-a", run="7", round=3, identity=key, update={"w": torch.zeros(4)}, weight=5)
    with pytest.raises(SecureAggregationError, match=f"run {run_id} round {server_round} arrived during run 7 round 3"):
        site_step(secagg_message(run_id, server_round), state, identity=key, manifest=dict)


def test_a_step_without_a_round_in_progress_is_rejected() -> None:
    with pytest.raises(SecureAggregationError, match="no secure-aggregation round is in progress"):
        site_step(secagg_message(7, 3), RecordDict(), identity=Ed25519PrivateKey.generate(), manifest=dict)
