"""Simulation-only baselines: what a researcher holding every site's data can also measure.

- **Pooled**: one model trained with DP-SGD on all sites' training data together, under
  the run's DP terms and for as many epochs as a site trains in the whole run: the upper
  bound a federation aims for.
- **Leave one site out**: the same federation without each site in turn, which meets that
  site for the first time in cross-site evaluation: how the model does at a new hospital.

Neither can exist in a real consortium. Their spend is booked in scratch folders under
the run folder, never in a simulated hospital's own books, and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.data import ConcatDataset

from fedmed.config import ExperimentConfig
from fedmed.data import load_site_data
from fedmed.federation.consortium_keys import prepare_site_keys
from fedmed.federation.cross_site import save_baseline
from fedmed.federation.messages import POOLED_MODEL, Key, without_model_id
from fedmed.federation.node import CACHE_DIR
from fedmed.federation.recorder import MODEL_FILE
from fedmed.federation.runtime import SimulationEngine
from fedmed.federation.site import select_device
from fedmed.models import create_model, float_state
from fedmed.privacy import plan_privacy, train_private
from fedmed.privacy.randomness import SecureRandomness, SeededRandomness
from fedmed.tasks import create_task

BASELINES_DIR = "baselines"


def train_baselines(
    config: ExperimentConfig, out_dir: Path, engine: SimulationEngine, *, announce: Callable[[str], None],
) -> Path | None:
    """Train the baselines the config asks for; return the folder of their models, or None."""
    settings = config.evaluation
    if not (settings.pooled_baseline or settings.leave_one_site_out):
        return None
    folder = out_dir / BASELINES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.pt"):
        stale.unlink()
    if settings.pooled_baseline:
        announce("baseline: DP-SGD on all sites' training data pooled (simulation only)")
        started = time.monotonic()
        save_baseline(folder / "pooled.pt", POOLED_MODEL, train_pooled(config))
        announce(f"  pooled model trained in {time.monotonic() - started:.0f} s")
    if settings.leave_one_site_out and len(config.data.sites) > 1:
        for site in config.data.sites:
            announce(f"baseline: the federation without {site} (simulation only)")
            started = time.monotonic()
            state = train_without(config, site, folder / f"without-{site}", engine)
            if state is None:
                announce(f"  the federation without {site} did not complete; see {folder / f'without-{site}'}")
                continue
            save_baseline(folder / f"without-{site}.pt", without_model_id(site), state)
            announce(f"  trained in {time.monotonic() - started:.0f} s")
    return folder


def train_pooled(config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """DP-SGD on every site's training set at once, with the run's terms and epochs."""
    training = config.training
    task = create_task(config.task)
    sets = [
        load_site_data(
            config.data.root / site, spec=config.data, targets=task,
            cache_dir=config.data.cache_dir or config.state_root / site / CACHE_DIR,
        ).train
        for site in config.data.sites
    ]
    dataset = ConcatDataset([s.as_torch_dataset() for s in sets])
    epochs = training.local_epochs * training.rounds
    plan = plan_privacy(
        config.privacy, site="pooled", n_train=len(dataset), batch_size=training.batch_size,
        local_epochs=epochs, rounds=1,
    )
    torch.manual_seed(training.seed)  # the federation's initial model
    model = create_model(config.model.name, spec=config.data, outputs=task.outputs)
    randomness = SeededRandomness(training.seed) if training.unsafe_reproducible else SecureRandomness()
    train_private(
        model, dataset, plan, loss=task.loss, history=[], epochs=epochs, learning_rate=training.learning_rate,
        randomness=randomness, momentum=training.momentum, device=select_device(training.device),
    )
    return float_state(model)


def train_without(
    config: ExperimentConfig, left_out: str, folder: Path, engine: SimulationEngine
) -> dict[str, torch.Tensor] | None:
    """Run the federation without ``left_out`` in Flower's engine; its global model, or None."""
    sites = [s for s in config.data.sites if s != left_out]
    folder.mkdir(parents=True, exist_ok=True)
    reduced = config.model_copy(
        update={
            "name": f"{config.name} without {left_out}",
            "data": config.data.model_copy(update={"sites": sites, "synthesize": None}),
            "training": config.training.model_copy(update={"min_sites": min(config.min_sites, len(sites))}),
            "evaluation": config.evaluation.model_copy(
                update={"local_models": False, "pooled_baseline": False, "leave_one_site_out": False}
            ),
            "simulation": config.simulation.model_copy(
                update={
                    "state_root": folder / "state",  # scratch books: no hospital's own
                    "site_policies": {s: p for s, p in config.simulation.site_policies.items() if s in sites},
                }
            ),
        }
    )
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(reduced.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    prepare_site_keys(reduced)
    engine.run(
        run_config={Key.CONFIG_PATH: str(config_path.resolve()), Key.OUT_DIR: str(folder.resolve())},
        num_supernodes=len(sites), cpus_per_node=config.simulation.cpus_per_site,
        gpus_per_node=config.simulation.gpus_per_site,
        poll=lambda: None, log_path=folder / "flower.log",
    )
    model_file = folder / MODEL_FILE
    if not model_file.exists():
        return None
    return torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
