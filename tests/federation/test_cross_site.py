"""Cross-site evaluation through the real ServerApp and ClientApp, on LoopbackGrid.

Every site trains its local-only model (policy permitting) and evaluates every model;
a spy on the wire checks that suppressed cells leave a site as nothing but the word.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.app import app as client_app
from fedmed.config import ExperimentConfig, load_config
from fedmed.data import synthesize_hospitals
from fedmed.federation.cross_site import cross_site_evaluation
from fedmed.federation.identity import SiteRegistry, identity_record
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import CROSS_SITE_ACTION, Key
from fedmed.federation.recorder import RunRecorder
from fedmed.federation.server import run_federation
from fedmed.federation.simulation import prepare_site_keys
from fedmed.privacy.audit import audit_path

SITES = ["site-a", "site-b", "site-c"]


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(root, n_sites=3, images_per_site=80, image_size=32, test_fraction=0.5, seed=5)
    return root


def write_policy(path: Path, **terms: object) -> str:
    policy = {"max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
              "require_secure_aggregation": False, "share_local_model": True, **terms}
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return str(path)


def run(folder: Path, hospitals: Path, *, policies: dict[str, dict[str, object]]) -> tuple[dict, list[Message]]:
    """One two-round federation with local models; the results and every reply the server got."""
    folder.mkdir()
    config = {
        "name": "cross-site",
        "data": {"root": str(hospitals), "sites": SITES, "image_size": 16, "cache_dir": str(folder.parent / "cache")},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.5, "min_sites": 2},
        "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
        "secure_aggregation": {"enabled": False},
        "evaluation": {"local_models": True, "bootstrap_samples": 200},
        "simulation": {
            "site_policies": {site: write_policy(folder / f"{site}.yaml", **policies.get(site, {})) for site in SITES},
            "state_root": "state",
        },
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    prepare_site_keys(load_config(path))
    received: list[Message] = []
    grid = LoopbackGrid(
        client_app, {10 + i: {Key.PARTITION_ID: i} for i in range(len(SITES))},
        run_config={Key.CONFIG_PATH: str(path), Key.OUT_DIR: str(folder / "out")}, received=received,
    )
    torch.set_num_threads(1)
    run_federation(grid, grid.server_context)
    return json.loads((folder / "out" / "results.json").read_text(encoding="utf-8")), received


@pytest.fixture(scope="module")
def federation(hospitals: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[Message], Path]:
    """site-c keeps its local model; site-b releases no cell under 1000 patients."""
    folder = tmp_path_factory.mktemp("federation") / "run"
    results, received = run(
        folder, hospitals, policies={"site-b": {"min_cell_size": 1000}, "site-c": {"share_local_model": False}}
    )
    return results, received, folder / "out"


def test_every_model_is_evaluated_at_every_site(federation: tuple[dict, list[Message], Path]) -> None:
    results, _, _ = federation
    evaluation = results["evaluation"]
    assert [m["id"] for m in evaluation["models"]] == ["global", "local:site-a", "local:site-b"]
    assert [m["label"] for m in evaluation["models"]] == ["federated", "site-a alone", "site-b alone"]
    for model in ("global", "local:site-a", "local:site-b"):
        assert set(evaluation["matrix"][model]) == set(SITES)
        for site in ("site-a", "site-c"):
            cell = evaluation["matrix"][model][site]
            assert cell["n"] == 40 and 0.0 <= cell["auroc"] <= 1.0
            low, high = cell["auroc_ci"]
            assert low <= cell["auroc"] <= high
    assert evaluation["comparison"]["site-a"]["local"] == evaluation["matrix"]["local:site-a"]["site-a"]["auroc"]
    assert evaluation["comparison"]["site-a"]["pooled"] is None  # not trained outside simulation baselines


def test_a_site_that_keeps_its_local_model_is_named_with_its_reason(
    federation: tuple[dict, list[Message], Path],
) -> None:
    results, _, _ = federation
    reason = results["evaluation"]["refused"]["local:site-c"]
    assert "site-c" in reason and "share_local_model" in reason
    assert results["sites"]["site-c"]["local_model"] is None
    assert results["status"] == "completed"


def test_small_cells_leave_the_site_as_the_word_suppressed_only(federation: tuple[dict, list[Message], Path]) -> None:
    results, received, _ = federation
    replies = [m for m in received if m.metadata.message_type == "evaluate.cross_site" and not m.has_error()]
    sent_by_b = next(json.loads(str(m.content[Key.SITE][Key.EVALUATION])) for m in replies
                     if m.metadata.src_node_id == 11)  # site-b's node
    cells = [*sent_by_b["models"].values(), sent_by_b["subgroups"]["overall"]]
    cells += [c for a in sent_by_b["subgroups"]["attributes"].values() for c in a["groups"].values()]
    assert cells and all(cell == {"suppressed": True} for cell in cells)
    assert results["evaluation"]["matrix"]["global"]["site-b"] == {"suppressed": True}
    # nor does a round's evaluation over fewer patients than its cell size
    refusals = [f["reason"] for r in results["rounds"] for f in r["failures"] if f["stage"] == "evaluate"]
    assert len(refusals) == 2 and all("fewer than its min_cell_size 1000" in r for r in refusals)
    sex = results["evaluation"]["subgroups"]["site-a"]["attributes"]["sex"]
    assert set(sex["groups"]) >= {"F", "M"} and all("n" in cell for cell in sex["groups"].values())


def test_the_local_models_spend_is_on_the_books_and_the_audit_passes(
    federation: tuple[dict, list[Message], Path],
) -> None:
    results, _, out = federation
    local = results["sites"]["site-a"]["local_model"]
    assert local["epsilon"] > results["rounds"][-1]["sites"]["site-a"]["epsilon"]  # spent after the federation
    entries = [json.loads(line) for line in (out / "ledgers" / "site-a.jsonl").read_text().splitlines()]
    assert [e["round"] for e in entries] == [1, 2, 0]  # round 0: the local-only model
    assert results["sites"]["site-a"]["privacy"]["epsilon"] == pytest.approx(local["epsilon"])
    report = audit_path(out)
    assert report.verdict == "pass", report.to_json()


def test_an_unreadable_evaluation_reply_is_recorded_and_the_others_kept(tmp_path: Path) -> None:
    """A site running other code answers nonsense: the server records it and keeps the rest."""
    other_code = ClientApp()
    keys = {site: Ed25519PrivateKey.generate() for site in SITES}

    @other_code.evaluate(CROSS_SITE_ACTION)
    def answer(msg: Message, context: Context) -> Message:
        site = SITES[int(context.node_config[Key.PARTITION_ID])]
        reply = {"models": {"global": {"suppressed": True}}, "subgroups": {}}
        text = "not json" if site == "site-b" else json.dumps(reply)
        identity = identity_record(keys[site], site=site, run=msg.metadata.run_id, node=context.node_id,
                                   request=msg.metadata.message_id)
        content = RecordDict({Key.SITE: ConfigRecord({Key.EVALUATION: text}), Key.IDENTITY: identity})
        return Message(content, reply_to=msg)

    config = ExperimentConfig.model_validate({
        "name": "unreadable", "data": {"root": str(tmp_path), "sites": SITES}, "training": {"rounds": 1},
        "privacy": {"noise_multiplier": 1.0},
    })
    recorder = RunRecorder(tmp_path / "out", config)
    grid = LoopbackGrid(other_code, {10 + i: {Key.PARTITION_ID: i} for i in range(3)}, run_config={})
    weights = ArrayRecord({"w": torch.zeros(2)})
    registry = SiteRegistry({site: key.public_key() for site, key in keys.items()}, SITES)
    cross_site_evaluation(
        grid, config, recorder, registry=registry, global_arrays=weights, initial_arrays=weights, baselines={},
    )
    evaluation = recorder.results(status="completed", reason=None)["evaluation"]
    assert evaluation["matrix"]["global"] == {
        "site-a": {"suppressed": True}, "site-b": None, "site-c": {"suppressed": True}
    }
    (failure,) = evaluation["failures"]
    assert failure["node"] == 11 and "unreadable evaluation reply" in failure["reason"]
