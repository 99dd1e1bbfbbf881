"""What a site releases about its test patients is bounded, whatever models the server sends.

The review's seventh finding: score histograms (100 bins a class) for any weights the
server chose, no cell-size rule, any number of models. Here a server drives a real site
with crafted messages: a model whose scores give patients bins of their own, a second
evaluation of a round, an evaluation of a round the site never trained, too many models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, Message, RecordDict

from client.app import app as client_app
from fedmed.config import InputConfig, load_config
from fedmed.data import load_site_data, synthesize_hospitals
from fedmed.evaluation import predict_scores, score_histograms
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import CROSS_SITE_ACTION, MODEL_PREFIX, Key, encode_plan
from fedmed.federation.simulation import prepare_site_keys
from fedmed.models import create_model, float_state

IMAGE_SIZE, CELL = 16, 10
NODE = 10


class Site:
    """One simulated hospital on LoopbackGrid, driven by hand as a dishonest server would."""

    def __init__(self, folder: Path) -> None:
        synthesize_hospitals(folder / "data", n_sites=1, images_per_site=120, image_size=32, test_fraction=0.5, seed=6)
        (folder / "policy.yaml").write_text(yaml.safe_dump({
            "max_epsilon": 100.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
            "require_secure_aggregation": False, "min_cell_size": CELL,
        }), encoding="utf-8")
        path = folder / "experiment.yaml"
        path.write_text(yaml.safe_dump({
            "name": "bounds",
            "data": {"root": str(folder / "data"), "sites": ["site-a"], "image_size": IMAGE_SIZE,
                     "cache_dir": str(folder / "cache")},
            "training": {"rounds": 3, "local_epochs": 1, "batch_size": 32},
            "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
            "secure_aggregation": {"enabled": False},
            "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
        }), encoding="utf-8")
        self.config = load_config(path)
        prepare_site_keys(self.config)
        self.grid = LoopbackGrid(client_app, {NODE: {Key.PARTITION_ID: 0}}, run_config={Key.CONFIG_PATH: str(path)})
        self.data = load_site_data(
            folder / "data" / "site-a", spec=InputConfig(image_size=IMAGE_SIZE), cache_dir=folder / "cache"
        )

    def ask(self, message_type: str, content: RecordDict, server_round: int = 1) -> Message:
        plan = encode_plan(self.config)
        plan[Key.SERVER_ROUND] = server_round
        content[Key.CONFIG] = plan
        (reply,) = self.grid.send_and_receive([Message(content, NODE, message_type, group_id=str(server_round))])
        return reply


def crafted_model(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights, scaled: at the right scale the scores spread so that patients get bins of their own."""
    torch.manual_seed(4)
    state = float_state(create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE)))
    return {name: tensor * scale for name, tensor in state.items()}


def singletons(site: Site, weights: dict[str, torch.Tensor]) -> tuple[int, np.ndarray, np.ndarray]:
    """Bins holding exactly one test image, were the histogram released as computed."""
    model = create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE))
    model.load_state_dict(weights, strict=False)
    scores = predict_scores(model, site.data.test.images, device=torch.device("cpu"))
    positives, negatives = score_histograms(site.data.test.targets.numpy(), scores)
    return int(((positives + negatives) == 1).sum()), positives, negatives


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(tmp_path_factory.mktemp("site"))
    torch.manual_seed(0)
    start = ArrayRecord(float_state(create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE))))
    trained = site.ask("train", RecordDict({Key.ARRAYS: start}))
    assert not trained.has_error(), trained.error.reason
    return site


def test_a_crafted_model_reads_no_bin_smaller_than_the_cell_size(site: Site) -> None:
    weights = max((crafted_model(scale) for scale in (0.5, 1.0, 2.0, 4.0, 8.0)), key=lambda w: singletons(site, w)[0])
    count, exact_positives, _ = singletons(site, weights)
    assert count >= 5  # what the attack used to read: a patient's label, alone in its bin
    labels = site.data.test.targets.numpy()

    reply = site.ask("evaluate", RecordDict({Key.ARRAYS: ArrayRecord(weights)}))
    assert not reply.has_error(), reply.error.reason
    flat = [int(v) for v in reply.content[Key.METRICS][Key.RELEASE]]
    groups = [flat[k : k + 4] for k in range(0, len(flat), 4)]
    assert sum(g[2] + g[3] for g in groups) == len(labels) and sum(g[2] for g in groups) == exact_positives.sum()
    assert min(g[2] + g[3] for g in groups) >= CELL  # one patient per image here: images are patients
    assert all(a[1] < b[0] for a, b in zip(groups, groups[1:], strict=False))  # ordered, non-overlapping bin ranges


def test_a_round_is_evaluated_once_and_only_if_the_site_trained_in_it(site: Site) -> None:
    weights = ArrayRecord(crafted_model())
    assert not site.ask("train", RecordDict({Key.ARRAYS: weights}), server_round=2).has_error()
    first = site.ask("evaluate", RecordDict({Key.ARRAYS: weights}), server_round=2)
    assert not first.has_error(), first.error.reason
    again = site.ask("evaluate", RecordDict({Key.ARRAYS: weights}), server_round=2)
    assert again.has_error() and "already evaluated round 2 of this run" in again.error.reason
    untrained = site.ask("evaluate", RecordDict({Key.ARRAYS: weights}), server_round=5)
    assert untrained.has_error() and "it did not train round 5" in untrained.error.reason


def test_one_cross_site_evaluation_of_a_bounded_number_of_models(site: Site) -> None:
    def models(count: int) -> RecordDict:
        return RecordDict({f"{MODEL_PREFIX}model-{i}": ArrayRecord(crafted_model()) for i in range(count)})

    too_many = site.ask(f"evaluate.{CROSS_SITE_ACTION}", models(9))
    assert too_many.has_error() and "at most 8 models" in too_many.error.reason and "sent 9" in too_many.error.reason
    first = site.ask(f"evaluate.{CROSS_SITE_ACTION}", models(2))
    assert not first.has_error(), first.error.reason
    second = site.ask(f"evaluate.{CROSS_SITE_ACTION}", models(1))
    assert second.has_error() and "already evaluated the cross-site evaluation" in second.error.reason


def test_the_training_loss_never_leaves_the_site(site: Site) -> None:
    trained = site.ask("train", RecordDict({Key.ARRAYS: ArrayRecord(crafted_model())}), server_round=3)
    assert not trained.has_error(), trained.error.reason
    assert not any("loss" in key for key in trained.content[Key.METRICS])
