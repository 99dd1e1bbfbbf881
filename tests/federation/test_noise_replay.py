"""The review's first attack: a server that knows the seed replays the DP noise and removes it.

A one-step round (every record in the batch, one DP-SGD step) makes the update
``w0 - lr * (sum of clipped gradients + noise) / N``. A server that can predict the noise
subtracts it and holds the clipped-gradient sum in the clear. The attack is played against
the real site code twice: under the unsafe opt-out, where it works (so the test can fail),
and with the site's own CSPRNG, where it leaves an error as large as the noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from fedmed.config import InputConfig, TaskConfig, load_config
from fedmed.data import load_site_data, synthesize_hospitals
from fedmed.federation.messages import Key, encode_plan
from fedmed.federation.simulation import prepare_site_keys
from fedmed.models import create_model, float_state
from fedmed.privacy import plan_privacy, train_private
from fedmed.privacy.randomness import SeededRandomness
from fedmed.tasks import create_task

LEARNING_RATE, IMAGE_SIZE, NOISE = 0.5, 16, 1.0


class NoNoise:
    """The truth the attacker wants: the same step without noise (every record, rate 1)."""

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        return np.ones(n, dtype=bool)

    def gaussian(self, shape: torch.Size, std: float, *, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospital")
    synthesize_hospitals(root, n_sites=1, images_per_site=60, image_size=32, seed=8)
    return root


def one_step_round(folder: Path, hospital: Path, *, unsafe: bool) -> tuple[dict, dict, dict, object]:
    """The site trains one round of one full-batch step; returns (sent, released, clean update, plan)."""
    folder.mkdir()
    (folder / "policy.yaml").write_text(yaml.safe_dump({
        "max_epsilon": 1000.0, "delta": 1e-3, "accountant": "rdp", "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
        "require_secure_aggregation": False, "unsafe_accept_reproducible": unsafe,
    }), encoding="utf-8")
    config_path = folder / "experiment.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "replay",
        "data": {
            "root": str(hospital), "sites": ["site-a"], "image_size": IMAGE_SIZE, "cache_dir": str(folder / "cache")
        },
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 1000, "learning_rate": LEARNING_RATE,
                     "seed": 11, "unsafe_reproducible": unsafe},
        "privacy": {"noise_multiplier": NOISE, "delta": 1e-3, "accountant": "rdp"},  # PRV divides by log(1 - q)
        "secure_aggregation": {"enabled": False},
        "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
    }), encoding="utf-8")
    config = load_config(config_path)
    prepare_site_keys(config)
    torch.manual_seed(config.training.seed)
    sent = float_state(create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE)))
    plan = encode_plan(config)
    plan[Key.SERVER_ROUND] = 1
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 3, 1, 0
    message = Message(RecordDict({Key.ARRAYS: ArrayRecord(sent), Key.CONFIG: plan}), 10, "train")
    context = Context(3, 10, {Key.PARTITION_ID: 0}, RecordDict(), {Key.CONFIG_PATH: str(config_path)})
    reply = client_app(message, context)
    assert not reply.has_error(), reply.error.reason
    released = reply.content[Key.ARRAYS].to_torch_state_dict()

    data = load_site_data(hospital / "site-a", spec=InputConfig(image_size=IMAGE_SIZE), cache_dir=folder / "cache")
    privacy = plan_privacy(config.privacy, site="site-a", n_train=len(data.train), batch_size=1000,
                           local_epochs=1, rounds=1)
    assert privacy.sample_rate == 1.0 and privacy.steps_per_round == 1
    model = create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE))
    model.load_state_dict(sent, strict=False)
    train_private(model, data.train.as_torch_dataset(), privacy, loss=create_task(TaskConfig()).loss, history=[],
                  epochs=1, learning_rate=LEARNING_RATE,
                  randomness=NoNoise(), device=torch.device("cpu"))
    return sent, released, float_state(model), (len(data.train), privacy, config.training.seed)


def replayed_noise(names: list[str], shapes: dict[str, torch.Size], n: int, seed: int, std: float) -> dict:
    """What a server that knows the seed computes: the site's draws, in the site's order."""
    randomness = SeededRandomness(seed * 1_000_003 + 1)
    randomness.poisson_mask(n, 1.0)
    return {name: randomness.gaussian(shapes[name], std, dtype=torch.float32) for name in names}


def attack(sent: dict, released: dict, clean: dict, info: object) -> tuple[float, float]:
    """Error of the recovered clipped-gradient sum, and the norm of the noise it hides under."""
    n, privacy, seed = info
    std = privacy.noise_multiplier * privacy.max_grad_norm
    parameters = dict(create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE)).named_parameters())
    names = [name for name in sent if name in parameters]
    noise = replayed_noise(names, {k: sent[k].shape for k in names}, n, seed, std)
    error, size = 0.0, 0
    for name in names:
        # released = sent - lr * (G + z) / N; clean = sent - lr * G / N
        recovered = (sent[name] - released[name]) * n / LEARNING_RATE - noise[name]
        truth = (sent[name] - clean[name]) * n / LEARNING_RATE
        error += float(((recovered - truth) ** 2).sum())
        size += sent[name].numel()
    return error ** 0.5, std * size ** 0.5


def test_a_server_that_knows_the_seed_removes_the_noise(hospital: Path, tmp_path: Path) -> None:
    """The opt-out does what its name says: with seeded randomness the attack works."""
    error, noise = attack(*one_step_round(tmp_path / "unsafe", hospital, unsafe=True))
    assert error < 1e-3 * noise


def test_the_sites_own_randomness_leaves_the_noise_in_place(hospital: Path, tmp_path: Path) -> None:
    error, noise = attack(*one_step_round(tmp_path / "secure", hospital, unsafe=False))
    assert error > 0.9 * noise  # the replay misses entirely: what is left is the whole noise, and more
