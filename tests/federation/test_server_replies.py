"""The server records each site's evaluation by name (fedmed.federation.server.SiteTrackingFedAvg)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmed.config import load_config
from fedmed.federation.identity import SiteRegistry, identity_record
from fedmed.federation.messages import Key, metric_entries
from fedmed.federation.recorder import RunRecorder
from fedmed.federation.server import SiteTrackingFedAvg

SITES = ["site-a", "site-b"]
KEYS = {site: Ed25519PrivateKey.generate() for site in SITES}


def evaluated(site: str, *, node: int, metrics: dict[str, float | None], release: list[float]) -> Message:
    """``site``'s signed evaluate reply, as a site builds it (undefined metrics left out)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 1, 0
    request = Message(RecordDict(), node, "evaluate")
    request.metadata.__dict__["_message_id"] = f"request-{node}"
    TaskIdentity.node_id = node
    record = MetricRecord({Key.NUM_EXAMPLES: 8, **metric_entries(metrics), Key.RELEASE: release})
    identity = identity_record(KEYS[site], site=site, run=5, node=node, request=f"request-{node}")
    answer = Message(content=RecordDict({Key.METRICS: record, Key.IDENTITY: identity}), reply_to=request)
    TaskIdentity.node_id = 1
    return answer


def test_sites_whose_evaluations_define_different_metrics_are_all_recorded(tmp_path: Path) -> None:
    # site-b's model outlined no lesion in any test case: its HD95 is undefined and left out,
    # which Flower's FedAvg check refused ("All MetricRecords must have the same keys") and
    # the whole run stopped (seen in the first 3-D segmentation simulations)
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "name: replies\ntask: {kind: segmentation, structures: [lesion]}\n"
        f"data: {{root: data, sites: [{', '.join(SITES)}]}}\nmodel: {{name: unet}}\n"
        "training: {rounds: 1}\nprivacy: {noise_multiplier: 1.0}\n"
    )
    recorder = RunRecorder(tmp_path / "run", load_config(path))
    registry = SiteRegistry({site: key.public_key() for site, key in KEYS.items()}, SITES)
    strategy = SiteTrackingFedAvg(recorder, min_sites=2, registry=registry, secure=False)
    outlined = {"dice_lesion": 0.5, "hd95_lesion": 3.0, "dice": 0.5}
    nothing = {"dice_lesion": 0.0, "hd95_lesion": None, "dice": 0.0}
    replies = [
        evaluated("site-a", node=21, metrics=outlined, release=[8.0, 4.0]),
        evaluated("site-b", node=22, metrics=nothing, release=[8.0, 0.0]),
    ]
    pooled = strategy.aggregate_evaluate(1, replies)
    assert pooled is not None and pooled["pooled-dice"] == 0.25
    assert recorder.rounds[1].evaluate["site-a"]["hd95_lesion"] == 3.0
    assert "hd95_lesion" not in recorder.rounds[1].evaluate["site-b"]
    assert recorder.rounds[1].evaluate["site-b"]["dice"] == 0.0 and not recorder.rounds[1].failures
