"""Tests for fedmed.privacy.training: local DP-SGD whose epsilon is cumulative across rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmed.config import InputConfig, PrivacyConfig, TaskConfig
from fedmed.models import create_model, float_state
from fedmed.privacy.accountant import MechanismStep, epsilon_of
from fedmed.privacy.plan import PrivacyPlan, plan_privacy
from fedmed.privacy.randomness import SecureRandomness, SeededRandomness
from fedmed.privacy.training import TrainOutcome, train_private
from fedmed.tasks import create_task

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]

N_TRAIN, BATCH, SIZE, EPOCHS = 64, 16, 16, 2
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset() -> TensorDataset:
    """64 noisy 1x16x16 images; class 1 has a bright 6x6 square."""
    generator = torch.Generator().manual_seed(0)
    images = 0.2 * torch.rand(N_TRAIN, 1, SIZE, SIZE, generator=generator)
    labels = (torch.arange(N_TRAIN) % 2).float()
    images[labels == 1, :, 5:11, 5:11] += 0.8
    return TensorDataset(images, labels)


def make_plan(*, noise: float = 1.0, accountant: str = "rdp") -> PrivacyPlan:
    privacy = PrivacyConfig(noise_multiplier=noise, max_grad_norm=1.0, delta=1e-3, accountant=accountant)
    return plan_privacy(
        privacy, site="site-a", n_train=N_TRAIN, batch_size=BATCH, local_epochs=EPOCHS, rounds=3
    )


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", spec=InputConfig(image_size=SIZE))


def train(
    model: nn.Module,
    dataset: TensorDataset,
    plan: PrivacyPlan,
    history: list[MechanismStep],
    *,
    seed: int | None = 1,
    **kwargs: object,
) -> TrainOutcome:
    """DP-SGD with a seeded generator (reproducible), or the site's CSPRNG with ``seed=None``."""
    randomness = SecureRandomness() if seed is None else SeededRandomness(seed)
    options: dict = {
        "epochs": EPOCHS, "learning_rate": 0.1, "device": CPU, "randomness": randomness,
        "loss": create_task(TaskConfig()).loss,
    }
    options.update(kwargs)
    return train_private(model, dataset, plan, history=history, **options)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_two_rounds_spend_cumulatively(dataset: TensorDataset, accountant: str) -> None:
    plan = make_plan(accountant=accountant)
    assert plan.sample_rate == 0.25 and plan.steps_per_round == EPOCHS * 4
    model = make_model()
    start = {k: v.clone() for k, v in float_state(model).items()}

    first = train(model, dataset, plan, [])
    assert first.steps == plan.steps_per_round
    assert sum(s.steps for s in first.history) == first.steps
    assert first.history == [plan.round_step()]
    assert first.epsilon > 0
    assert first.epsilon == pytest.approx(epsilon_of([plan.round_step()], delta=1e-3, accountant=accountant))
    assert torch.isfinite(torch.tensor(first.loss))
    after_first = {k: v.clone() for k, v in float_state(model).items()}
    assert distance(start, after_first) > 0  # trained in place

    second = train(model, dataset, plan, first.history, seed=2)
    assert second.steps == plan.steps_per_round
    assert sum(s.steps for s in second.history) == first.steps + second.steps
    assert second.epsilon > first.epsilon  # cumulative, not restarted at zero
    assert second.epsilon == pytest.approx(
        epsilon_of(second.history, delta=1e-3, accountant=accountant), rel=1e-9
    )
    assert second.epsilon == pytest.approx(
        epsilon_of([MechanismStep(1.0, 0.25, 2 * plan.steps_per_round)], delta=1e-3, accountant=accountant),
        rel=1e-6,
    )
    assert torch.isfinite(torch.tensor(second.loss))
    assert distance(after_first, float_state(model)) > 0


def test_history_from_another_plan_is_kept(dataset: TensorDataset) -> None:
    earlier = [MechanismStep(2.0, 0.1, 30)]
    outcome = train(make_model(), dataset, make_plan(), earlier)
    assert outcome.history[0] == earlier[0]
    assert sum(s.steps for s in outcome.history) == 30 + outcome.steps
    assert outcome.epsilon > epsilon_of(earlier, delta=1e-3, accountant="rdp")


def test_model_is_a_plain_module_after_training(dataset: TensorDataset) -> None:
    model = make_model()
    train(model, dataset, make_plan(), [])
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in model.parameters())
    assert model(torch.rand(3, 1, SIZE, SIZE)).shape == (3, 1)
    assert float_state(model).keys() == float_state(make_model()).keys()


def test_proximal_term_keeps_weights_near_the_start(dataset: TensorDataset) -> None:
    plan = make_plan()
    plain, proximal = make_model(), make_model()
    start = {k: v.clone() for k, v in float_state(plain).items()}
    assert distance(start, float_state(proximal)) == 0

    train(plain, dataset, plan, [], seed=3, learning_rate=0.5, proximal_mu=0.0)
    train(proximal, dataset, plan, [], seed=3, learning_rate=0.5, proximal_mu=1.0)
    moved_plain = distance(start, float_state(plain))
    moved_proximal = distance(start, float_state(proximal))
    assert 0 < moved_proximal < 0.5 * moved_plain  # about 0.2 over seeds 0-5


def test_same_seed_same_weights(dataset: TensorDataset) -> None:
    a, b = make_model(), make_model()
    train(a, dataset, make_plan(), [], seed=5)
    train(b, dataset, make_plan(), [], seed=5)
    assert distance(float_state(a), float_state(b)) == 0


def test_the_sites_own_randomness_gives_a_different_update_each_time(dataset: TensorDataset) -> None:
    """Nothing the server sends (seeds included) decides the batches or the noise."""
    a, b = make_model(), make_model()
    torch.manual_seed(5)
    train(a, dataset, make_plan(), [], seed=None)
    torch.manual_seed(5)
    train(b, dataset, make_plan(), [], seed=None)
    assert distance(float_state(a), float_state(b)) > 0.01


def test_learns_the_bright_square_with_little_noise(dataset: TensorDataset) -> None:
    model = make_model()
    outcome = train(model, dataset, make_plan(noise=0.3), [], epochs=15, learning_rate=0.5)
    assert outcome.steps == 15 * 4
    images, labels = dataset.tensors
    with torch.no_grad():
        predicted = (model(images).squeeze(1) > 0).float()
    assert (predicted == labels).float().mean() >= 0.9
    assert outcome.loss < 0.69  # below chance-level BCE of ln 2


class NoRecords(SeededRandomness):
    """Every Poisson batch is empty (each record's draw fails); the noise is seeded."""

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        return np.zeros(n, dtype=bool)


@pytest.mark.parametrize(("name", "shape"), [("unet", (16, 16)), ("unet_3d", (8, 8, 8)), ("small_cnn", (16, 16))])
def test_an_empty_poisson_batch_is_a_noise_only_step(name: str, shape: tuple[int, ...]) -> None:
    # the U-Nets' ConvTranspose has no Opacus sampler; its functorch fallback cannot vmap over
    # zero samples ("expected groups to be greater than 0"), which stopped small sites' training
    series = len(shape) == 3
    spec = InputConfig(sample="series", volume={"shape": shape}) if series else InputConfig(image_size=shape[0])
    task = create_task(TaskConfig(kind="segmentation", structures=["lesion"]) if name != "small_cnn" else TaskConfig())
    torch.manual_seed(0)
    model = create_model(name, spec=spec, outputs=task.outputs)
    images = torch.rand(N_TRAIN, 1, *shape)
    targets = torch.zeros((N_TRAIN, *shape), dtype=torch.int64) if name != "small_cnn" else torch.zeros(N_TRAIN)
    before = {k: v.clone() for k, v in float_state(model).items()}
    outcome = train_private(
        model, TensorDataset(images, targets), make_plan(), loss=task.loss, history=[], epochs=1,
        learning_rate=0.1, randomness=NoRecords(0), device=CPU,
    )
    assert outcome.steps == N_TRAIN // BATCH and outcome.epsilon > 0  # each empty step counted
    assert distance(before, float_state(model)) > 0  # and moved by its noise
