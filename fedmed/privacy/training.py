"""Local DP-SGD training of one site's model with Opacus."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedmed.privacy.accountant import MechanismStep, epsilon_of, history_of, quiet_opacus
from fedmed.privacy.plan import PrivacyPlan


@dataclass(frozen=True)
class TrainOutcome:
    loss: float
    """Mean training loss over the round's batches."""
    steps: int
    history: list[MechanismStep]
    """The site's whole privacy history after this round."""
    epsilon: float
    """Cumulative epsilon after this round."""


def train_private(
    model: nn.Module,
    dataset: Dataset,
    plan: PrivacyPlan,
    *,
    history: list[MechanismStep],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    device: torch.device,
) -> TrainOutcome:
    """Train ``model`` in place for ``epochs`` with DP-SGD, Poisson sampling.

    The accountant starts from ``history`` (the site's earlier spend), so the epsilon
    returned is cumulative. FedProx's proximal term mu/2 * ||w - w_global||^2 does not
    depend on data: it is applied after the private step (post-processing), because
    Opacus would leave it out of the per-sample gradients it clips and noises.
    """
    model.to(device).train()
    global_weights = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)

    with quiet_opacus():
        engine = PrivacyEngine(accountant=plan.accountant)
        engine.accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
        private_model, optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True,
        )
    if abs(private_loader.sample_rate - plan.sample_rate) > 1e-12:
        raise RuntimeError(  # the plan's epsilon would not describe this training
            f"Opacus samples at rate {private_loader.sample_rate}, the plan at {plan.sample_rate}"
        )

    criterion = nn.BCEWithLogitsLoss()
    total_loss, batches = 0.0, 0
    with quiet_opacus():
        for _ in range(epochs):
            for images, labels in private_loader:
                optimizer.zero_grad(set_to_none=True)
                images, labels = images.to(device), labels.to(device)
                loss = criterion(private_model(images).squeeze(1), labels)
                loss.backward()
                optimizer.step()
                if proximal_mu:
                    _apply_proximal_step(model, global_weights, learning_rate * proximal_mu)
                total_loss += float(loss.detach())
                batches += 1
    new_history = history_of(engine.accountant)
    private_model.to_standard_module()  # drop hooks and grad samples; ``model`` is trained
    return TrainOutcome(
        loss=total_loss / max(batches, 1),
        steps=sum(s.steps for s in new_history) - sum(s.steps for s in history),
        history=new_history,
        epsilon=epsilon_of(new_history, delta=plan.delta, accountant=plan.accountant),
    )


@torch.no_grad()
def _apply_proximal_step(model: nn.Module, global_weights: list[torch.Tensor], rate: float) -> None:
    """w <- w - lr * mu * (w - w_global): the gradient step of FedProx's proximal term."""
    for param, anchor in zip(model.parameters(), global_weights):
        param.sub_(param - anchor, alpha=rate)
