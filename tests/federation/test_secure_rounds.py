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
from fedmed.federation.consortium_keys import prepare_site_keys
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import Key
from fedmed.federation.secure_rounds import MESSAGE_TYPE, RECORD, UPDATE, Field, begin_round, site_step
from fedmed.federation.server import run_federation
from fedmed.models import create_model, float_state
from fedmed.secure.ring import RING, SCALE
from fedmed.secure.secagg import SecureAggregationError

SITES = ["site-a", "site-b", "site-c"]
FOUR = [*SITES, "site-d"]
NODES = {10 + i: site for i, site in enumerate(FOUR)}
NODE_OF = {site: node for node, site in NODES.items()}


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(root, n_sites=4, images_per_site=60, image_size=32, seed=3)
    return root


class Run:
    """One federation on LoopbackGrid; everything the server received is in ``received``.

    ``reproducible`` runs under training.unsafe_reproducible (sites' policies accepting
    it), so that two runs can be compared value for value.
    """

    def __init__(
        self, folder: Path, hospitals: Path, *, secure: bool, require: bool = False, sites: list[str] = SITES,
        drop_at_mask: tuple[str, ...] = (), manifest: bool = True, reproducible: bool = True,
        grid_class: type[LoopbackGrid] = LoopbackGrid, **training: object,
    ) -> None:
        folder.mkdir()
        policy = {
            "max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
            "require_secure_aggregation": require, "unsafe_accept_reproducible": reproducible,
        }
        (folder / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
        config = {
            "name": "loopback",
            "data": {
                "root": str(hospitals), "sites": sites, "image_size": 16, "cache_dir": str(folder.parent / "cache")
            },
            "training": {
                "rounds": 1, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.5, "min_sites": 2,
                "unsafe_reproducible": reproducible, **training,
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

        nodes = list(NODES)[: len(sites)]
        grid = grid_class(
            client_app, {node: {Key.PARTITION_ID: i} for i, node in enumerate(nodes)},
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
            NODES[m.metadata.src_node_id]: m
            for m in self.received
            if m.metadata.message_type == "train" and not m.has_error()
        }


def initial_model(run: Run) -> dict[str, torch.Tensor]:
    torch.manual_seed(run.config.training.seed)  # as the ServerApp builds it
    return float_state(create_model(run.config.model.name, spec=run.config.data))


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
    assert secure.results["unsafe_reproducible"] is True
    round_one = secure.results["rounds"][0]
    assert round_one["secure_aggregation"]["sites"] == SITES
    assert round_one["secure_aggregation"]["dropped"] == []
    assert round_one["secure_aggregation"]["threshold"] == 3
    # seeded randomness (the unsafe opt-out), same data: the sites trained the same updates in both runs
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
    arrays = [
        (m, name, record)
        for m in secure.received if not m.has_error()
        for name, record in m.content.array_records.items()
    ]
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


def test_a_site_that_vanishes_mid_round_is_recovered(hospitals: Path, tmp_path: Path) -> None:
    plain = Run(tmp_path / "plain", hospitals, secure=False, sites=FOUR)
    run = Run(tmp_path / "run", hospitals, secure=True, sites=FOUR, drop_at_mask=("site-b",))
    summary = run.results["rounds"][0]["secure_aggregation"]
    assert run.results["status"] == "completed"
    assert summary["sites"] == ["site-a", "site-c", "site-d"] and summary["dropped"] == ["site-b"]
    assert summary["threshold"] == 3
    assert max_difference(run.model(), weighted_mean(plain, ["site-a", "site-c", "site-d"])) < 1e-6


def test_too_many_vanishing_abandons_the_round_and_reveals_nothing(hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, drop_at_mask=("site-b",))
    summary = run.results["rounds"][0]["secure_aggregation"]
    assert "only 2 site(s) sent masked inputs, fewer than the secure-aggregation threshold 3" in summary["abandoned"]
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
    begin_round(
        state, site="site-a", run="7", round=3, identity=key, update={"w": torch.zeros(4)}, examples=5, min_group=3
    )
    with pytest.raises(SecureAggregationError, match=f"run {run_id} round {server_round} arrived during run 7 round 3"):
        site_step(secagg_message(run_id, server_round), state, identity=key, manifest=dict)


def test_a_step_without_a_round_in_progress_is_rejected() -> None:
    with pytest.raises(SecureAggregationError, match="no secure-aggregation round is in progress"):
        site_step(secagg_message(7, 3), RecordDict(), identity=Ed25519PrivateKey.generate(), manifest=dict)


# ------------------------------------------------------------------------ a lying server


class TotalLyingGrid(LoopbackGrid):
    """The review's weight lie: site-a is told its own count as the round's total, every
    other site a total of 10^15, so that their encodings would round to zero and the
    "secure sum" would be site-a's update alone. Sites now take no total from the server."""

    def push_messages(self, messages):  # noqa: ANN001, ANN201 - Grid's signature
        for message in messages:
            if message.metadata.message_type == MESSAGE_TYPE and message.content[RECORD][Field.STAGE] == "share":
                lie = 300 if message.metadata.dst_node_id == NODE_OF["site-a"] else 10**15
                message.content[RECORD]["total-weight"] = lie
        return super().push_messages(messages)


def test_a_total_lied_to_each_site_does_not_isolate_one_update(plain: Run, hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, grid_class=TotalLyingGrid)
    assert run.results["rounds"][0]["secure_aggregation"]["sites"] == SITES
    assert max_difference(run.model(), weighted_mean(plain, SITES)) < 1e-6  # the honest weighted mean
    target = plain.train_replies()["site-a"].content[Key.ARRAYS].to_torch_state_dict()
    assert max_difference(run.model(), target) > 1e-3


class RoundRepeatingGrid(LoopbackGrid):
    """A server that sends every train message twice, to run two sessions of one round."""

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        messages = list(messages)
        ids = list(super().push_messages(messages))
        if messages and messages[0].metadata.message_type == "train":
            repeats = [
                Message(m.content, m.metadata.dst_node_id, "train", group_id=m.metadata.group_id) for m in messages
            ]
            for message_id in super().push_messages(repeats):
                self._replies.pop(message_id)  # the server keeps them to itself (run.received has them)
        return ids


def test_a_site_trains_each_round_once(hospitals: Path, tmp_path: Path) -> None:
    run = Run(tmp_path / "run", hospitals, secure=True, grid_class=RoundRepeatingGrid, reproducible=False)
    refusals = [m.error.reason for m in run.received if m.metadata.message_type == "train" and m.has_error()]
    assert len(refusals) == 3 and all("already trained round 1 of run 1" in r for r in refusals)
    assert run.results["status"] == "completed"
    assert run.results["rounds"][0]["secure_aggregation"]["sites"] == SITES
    for site in SITES:
        ledger = (run.out / "ledgers" / f"{site}.jsonl").read_text().splitlines()
        assert len(ledger) == 1
