"""The server knows a site by its signature, never by what a reply says (fedmed.federation.identity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from fedmed.config import load_config
from fedmed.data import synthesize_hospitals
from fedmed.federation.consortium_keys import prepare_site_keys
from fedmed.federation.identity import SiteRegistry, UnverifiedSite, identity_record
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import Key
from fedmed.federation.node import SIGNING_KEY_FILE
from fedmed.federation.server import run_federation
from fedmed.secure.keys import load_signing_key

KEYS = {site: Ed25519PrivateKey.generate() for site in ("site-a", "site-b")}
MANIFEST = {site: key.public_key() for site, key in KEYS.items()}


def reply(*, node: int, identity: ConfigRecord | None, run: int = 5) -> Message:
    """A reply from ``node`` to a fresh server message, as the server receives it."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run, 1, 0
    request = Message(RecordDict(), node, "train")
    request.metadata.__dict__["_message_id"] = f"request-{node}"
    TaskIdentity.node_id = node
    content = RecordDict({Key.IDENTITY: identity} if identity is not None else {})
    answer = Message(content=content, reply_to=request)
    TaskIdentity.node_id = 1
    return answer


def signed(
    site: str, *, key: Ed25519PrivateKey | None = None, node: int = 21, run: int = 5, request: str = ""
) -> ConfigRecord:
    return identity_record(key or KEYS[site], site=site, run=run, node=node, request=request or f"request-{node}")


def test_a_signed_reply_names_its_site_and_binds_the_node() -> None:
    registry = SiteRegistry(MANIFEST, ["site-a", "site-b"])
    assert registry.identify(reply(node=21, identity=signed("site-a"))) == "site-a"
    assert registry.node_sites == {21: "site-a"}


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (None, "carries no signed site identity"),
        (signed("site-b", key=KEYS["site-a"]), "signature on site site-b's reply does not verify"),
        (signed("../../escape", key=KEYS["site-a"]), "'../../escape', which is not in the consortium's key manifest"),
        (signed("site-a", node=22, request="request-21"), "is for node 22, not node 21"),
        (signed("site-a", request="request-99"), "is for request request-99, not request request-21"),
        (signed("site-a", run=4), "is for run 4, not run 5"),
    ],
    ids=["unsigned", "borrowed-id", "traversal", "other-node", "replayed", "other-run"],
)
def test_a_reply_that_cannot_prove_its_site_is_ignored(identity: ConfigRecord | None, reason: str) -> None:
    registry = SiteRegistry(MANIFEST, ["site-a", "site-b"])
    with pytest.raises(UnverifiedSite, match=reason):
        registry.identify(reply(node=21, identity=identity))
    assert registry.node_sites == {}


def test_a_node_answers_for_one_site_only() -> None:
    registry = SiteRegistry(MANIFEST, ["site-a", "site-b"])
    registry.identify(reply(node=21, identity=signed("site-a")))
    with pytest.raises(UnverifiedSite, match="answered as site site-a before and now as site-b"):
        registry.identify(reply(node=21, identity=signed("site-b", node=21)))


def test_a_site_outside_the_manifest_stops_the_run_before_it_starts() -> None:
    with pytest.raises(Exception, match="site-c of this run have no key in the consortium's key manifest"):
        SiteRegistry(MANIFEST, ["site-a", "site-c"])


# ------------------------------------------------------------- an impersonating node, end to end


class Impersonator:
    """site-c's node runs the real ClientApp, then rewrites who its replies say they are from."""

    def __init__(self, node: int, claim: str, key: Ed25519PrivateKey) -> None:
        self.node, self.claim, self.key = node, claim, key

    def __call__(self, message: Message, context: Context) -> Message:
        answer = client_app(message, context)
        if context.node_id == self.node and not answer.has_error():
            answer.content[Key.IDENTITY] = identity_record(
                self.key, site=self.claim, run=message.metadata.run_id, node=self.node,
                request=message.metadata.message_id,
            )
        return answer


@pytest.mark.parametrize("claim", ["site-a", "../../../escape"], ids=["borrowed-id", "traversal"])
def test_a_node_posing_as_another_site_writes_nothing_of_it(claim: str, tmp_path: Path) -> None:
    root = tmp_path / "hospitals"
    synthesize_hospitals(root, n_sites=3, images_per_site=40, image_size=32, seed=4)
    policy = {"max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
              "require_secure_aggregation": False}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    config_path = tmp_path / "experiment.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "impostor",
        "data": {"root": str(root), "sites": ["site-a", "site-b", "site-c"], "image_size": 16,
                 "cache_dir": str(tmp_path / "cache")},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "min_sites": 2},
        "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
        "secure_aggregation": {"enabled": False},
        "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
    }), encoding="utf-8")
    config = load_config(config_path)
    prepare_site_keys(config)
    own_key = load_signing_key(config.state_root / "site-c" / SIGNING_KEY_FILE)
    out = tmp_path / "run" / "out"
    grid = LoopbackGrid(
        Impersonator(12, claim, own_key), {10 + i: {Key.PARTITION_ID: i} for i in range(3)},
        run_config={Key.CONFIG_PATH: str(config_path), Key.OUT_DIR: str(out)},
    )
    run_federation(grid, grid.server_context)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "completed"
    assert sorted(results["rounds"][0]["sites"]) == ["site-a", "site-b"]
    ignored = [f for f in results["rounds"][0]["failures"] if f["node"] == 12]
    assert ignored and all("ignored" in f["reason"] for f in ignored)
    assert sorted(p.name for p in (out / "ledgers").iterdir()) == [
        "site-a.jsonl", "site-a.pub", "site-b.jsonl", "site-b.pub"
    ]
    assert not list(tmp_path.rglob("escape*"))
    site_a = [json.loads(line) for line in (out / "ledgers" / "site-a.jsonl").read_text().splitlines()]
    assert [entry["site"] for entry in site_a] == ["site-a"]
