"""Local DP-SGD training of one site's model with Opacus, on the site's own randomness.

The pieces of Opacus' ``make_private`` are put together here rather than called through
it, for one reason: ``make_private`` draws Poisson batches and noise from torch's
generator, and a secure source (``secure_mode``) needs ``torchcsprng``, which has no
current wheels. fedmed's :class:`~fedmed.privacy.randomness.Randomness` takes its place:
the same per-sample gradients (``GradSampleModule``), clipping and accounting
(``DPOptimizer`` with the accountant's step hook), with batches and noise drawn from the
operating system's CSPRNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from fedmed.privacy.accountant import MechanismStep, epsilon_of, history_of, quiet_opacus
from fedmed.privacy.plan import PrivacyPlan
from fedmed.privacy.randomness import Randomness


@dataclass(frozen=True)
class TrainOutcome:
    loss: float
    """Mean training loss over the round's batches: for the site's own log, never sent."""
    steps: int
    history: list[MechanismStep]
    """The site's whole privacy history after this round."""
    epsilon: float
    """Cumulative epsilon after this round."""


class PoissonBatches:
    """Batch sampler: each record joins each batch independently with the plan's rate.

    The batch sampler of Opacus' ``DPDataLoader``, drawing from ``randomness`` instead of
    torch's generator. Its length is the plan's steps per epoch, so the rate Opacus would
    derive (1 / len) is the plan's.
    """

    def __init__(self, n_records: int, *, rate: float, steps: int, randomness: Randomness) -> None:
        self.n_records, self.rate, self.steps, self.randomness = n_records, rate, steps, randomness

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # noqa: ANN204 - an iterator of index lists, as DataLoader wants
        for _ in range(self.steps):
            yield np.flatnonzero(self.randomness.poisson_mask(self.n_records, self.rate)).tolist()


class SiteNoiseOptimizer(DPOptimizer):
    """Opacus' DPOptimizer, its Gaussian noise drawn from the site's randomness."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, randomness: Randomness, **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)
        self.randomness = randomness

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for param in self.params:
            summed = param.summed_grad
            noise = self.randomness.gaussian(summed.shape, std, dtype=summed.dtype)
            param.grad = (summed + noise.to(summed.device, non_blocking=True)).view_as(param)


def poisson_loader(dataset: Dataset, plan: PrivacyPlan, *, randomness: Randomness) -> DataLoader:
    """Batches by Poisson sampling at the plan's rate; an empty batch keeps its shapes."""
    first = dataset[0]
    return DataLoader(
        dataset,
        batch_sampler=PoissonBatches(
            len(dataset), rate=plan.sample_rate, steps=round(1 / plan.sample_rate), randomness=randomness,
        ),
        collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate,
            sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
            dtypes=[dtype_safe(x) for x in first],
        ),
    )


def train_private(
    model: nn.Module,
    dataset: Dataset,
    plan: PrivacyPlan,
    *,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    history: list[MechanismStep],
    epochs: int,
    learning_rate: float,
    randomness: Randomness,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    device: torch.device,
) -> TrainOutcome:
    """Train ``model`` in place for ``epochs`` with DP-SGD, Poisson sampling.

    ``loss(logits, targets)`` is the task's (fedmed.tasks), a mean over the batch as
    Opacus' ``loss_reduction="mean"`` assumes. An empty Poisson batch skips the model
    and the loss: its step is noise alone, as DP-SGD's accounting has it.

    The accountant starts from ``history`` (the site's earlier spend), so the epsilon
    returned is cumulative. FedProx's proximal term mu/2 * ||w - w_global||^2 does not
    depend on data: it is applied after the private step (post-processing), because
    Opacus would leave it out of the per-sample gradients it clips and noises.
    """
    model.to(device).train()
    global_weights = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    accountant = create_accountant(plan.accountant)
    accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
    loader = poisson_loader(dataset, plan, randomness=randomness)
    with quiet_opacus():
        private_model = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        private_model.forbid_grad_accumulation()
        optimizer = SiteNoiseOptimizer(
            torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum),
            randomness=randomness,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            expected_batch_size=int(len(dataset) * plan.sample_rate),
            loss_reduction="mean",
        )
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))

    total_loss, batches = 0.0, 0
    with quiet_opacus():
        for _ in range(epochs):
            for images, targets in loader:
                optimizer.zero_grad(set_to_none=True)
                images, targets = images.to(device), targets.to(device)
                if len(targets):
                    batch_loss = loss(private_model(images), targets)
                    batch_loss.backward()
                    total_loss += float(batch_loss.detach())
                    batches += 1
                else:
                    _no_sample_gradients(optimizer)
                optimizer.step()
                if proximal_mu:
                    _apply_proximal_step(model, global_weights, learning_rate * proximal_mu)
    new_history = history_of(accountant)
    private_model.to_standard_module()  # drop hooks and grad samples; ``model`` is trained
    return TrainOutcome(
        loss=total_loss / max(batches, 1),
        steps=sum(s.steps for s in new_history) - sum(s.steps for s in history),
        history=new_history,
        epsilon=epsilon_of(new_history, delta=plan.delta, accountant=plan.accountant),
    )


def _no_sample_gradients(optimizer: DPOptimizer) -> None:
    """An empty Poisson batch's per-sample gradients: none, so the step adds noise to a zero sum.

    Set directly rather than by a backward pass: Opacus' functorch fallback (the U-Nets'
    ConvTranspose) cannot vmap over zero samples ("expected groups to be greater than 0").
    The step still counts, as the accountant assumes.
    """
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


@torch.no_grad()
def _apply_proximal_step(model: nn.Module, global_weights: list[torch.Tensor], rate: float) -> None:
    """w <- w - lr * mu * (w - w_global): the gradient step of FedProx's proximal term."""
    for param, anchor in zip(model.parameters(), global_weights, strict=True):
        param.sub_(param - anchor, alpha=rate)
