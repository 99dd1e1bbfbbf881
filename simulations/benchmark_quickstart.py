"""Benchmark: where the quickstart's time goes, and what DP-SGD costs per sample.

A benchmark, not a test: it measures this machine, prints tables and asserts nothing.
Numbers from a shared or busy machine are noisy; run it twice before you trust a ratio.

It measures two things, side by side in one run:

1. **Framework overhead of every quickstart federation.** Each real quickstart
   (every ``configs/quickstart*.yaml``: binary 2-D and 3-D, segmentation, ... or those
   given with ``--configs``), one after another, runs through
   ``fedmed.federation.simulation.simulate``, the same path as ``fedmed simulate``, with
   its local-only models and pooled baseline left out. The wall time of that call is compared with the
   sites' own local work, the sum over sites of ``train_seconds + eval_seconds`` from
   results.json (each site times its handler: data loading, privacy plan, DP-SGD,
   evaluation). ``wall / site work`` above 1 is time spent outside the sites' training and
   evaluation: Flower SuperLink and Ray start-up, process start, message passing, the
   server's aggregation. Sites run concurrently (one Ray actor per ``cpus_per_site``
   CPUs), so the table also gives ``wall / (site work / concurrency)`` with
   ``concurrency = min(n_sites, cpu_count // cpus_per_site)``: near 1 means the run is
   about as fast as the sites' own work allows on this machine. ``server run`` is the
   results.json ``wall_seconds`` (from the ServerApp's recorder start to results written),
   so ``wall - server run`` is engine start-up and shutdown.

2. **The cost of differential privacy.** Training throughput (samples/s) of every
   registered 2-D model and the 3-D segmenters on random 1-channel images (volumes for a
   3-D network), non-private (a plain SGD loop) against DP-SGD through
   ``fedmed.privacy.train_private`` with a fixed noise multiplier
   (``PrivacyConfig(noise_multiplier=1.0, delta=1e-5)``, planned by ``plan_privacy``).
   Classifiers train one logit with binary cross-entropy on random labels; segmenters
   train background plus two structures with MONAI's ``DiceCELoss`` on random label maps.
   Opacus computes and clips a gradient per sample, which is what the ratio shows. The
   timed DP call is the whole ``train_private`` call a site pays each round: Opacus
   set-up, Poisson-sampled training and the (PRV) epsilon at the end; the accounting time
   is measured separately and shown so it can be subtracted. Samples are counted as they
   reach the model (Poisson batches vary in size). Each model and mode gets a warm-up
   batch, then ``--repeats`` timed passes; the best pass counts, as with ``timeit``, because
   on a shared machine the slow passes measure the neighbours. torch uses
   ``os.cpu_count()`` threads for this part.

The machine facts (CPU count, torch version, device, load average) are printed first.

Run from the repository root::

    python simulations/benchmark_quickstart.py [--skip-federation] [--skip-throughput]
        [--configs YAML ...] [--out DIR] [--samples N] [--model-samples NAME=N] [--repeats R] [--batch-size B]
        [--image-size S] [--volume-shape D H W] [--models NAME ...]

Each quickstart's demo data is generated under data/ on first use (by simulate()), in
which case that federation's wall time includes writing it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tables import Section, console, show, to_markdown  # simulations/, the script's folder
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if TYPE_CHECKING:
    from fedmed.config import InputConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"
DEFAULT_SAMPLES = {
    "small_cnn": 1024, "densenet121": 64, "unet": 512, "segresnet": 128, "unet_3d": 256, "segresnet_3d": 64,
}
"""Timed samples per model: enough for a stable rate, small enough for a 2-core CPU."""
SEGMENTATION_CLASSES = 3
"""Background and two structures: what a segmenter's random label maps hold."""
FALLBACK_SAMPLES = 256
LEARNING_RATE = 0.05
MOMENTUM = 0.5

def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


# ---------------------------------------------------------------------------- machine


def machine_section(device: torch.device) -> Section:
    import flwr
    import monai
    import opacus

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = [
        ["cpu count (os.cpu_count)", str(os.cpu_count())],
        ["platform", platform.platform()],
        ["python", platform.python_version()],
        ["torch", torch.__version__],
        ["opacus / flwr / monai", f"{opacus.__version__} / {flwr.__version__} / {monai.__version__}"],
        ["throughput device", _device_name(device)],
        ["load average (1, 5, 15 min) at start", "n/a" if load is None else ", ".join(f"{x:.2f}" for x in load)],
    ]
    return Section("machine", ["fact", "value"], rows, [])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


# ---------------------------------------------------------------------------- federation


def quickstart_configs() -> list[Path]:
    """Every quickstart config shipped in configs/, the binary 2-D one first."""
    return sorted(REPO_ROOT.glob("configs/quickstart*.yaml"), key=lambda p: (p != QUICKSTART_CONFIG, p.name))


def fresh_books_config(config_path: Path, out_dir: Path) -> Path:
    """The quickstart config with the hospitals' privacy books in ``out_dir``.

    Simulated hospitals keep their spend across runs; a benchmark must not be refused
    because the quickstart already spent the demo policy's budget on this data. The
    local-only models and the pooled baseline are left out: this measures the federation.
    """
    import yaml

    from fedmed.config import load_config

    resolved = load_config(config_path)
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw["data"]["root"] = str(resolved.data.root)
    raw["simulation"]["site_policy"] = str(resolved.simulation.site_policy)
    raw["simulation"]["state_root"] = str(out_dir / "hospital-state")
    raw["evaluation"] = {**raw.get("evaluation", {}), "local_models": False, "pooled_baseline": False}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{config_path.stem}-benchmark.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@dataclass
class FederationRun:
    """One quickstart federation's measures, for its own tables and the summary across configs."""

    config: str
    task: str
    model: str
    wall: float
    server_run: float | None
    site_work: float | None
    concurrency: int
    metric_label: str
    pooled: float | None
    sections: list[Section]


def benchmark_federation(config_path: Path, out_dir: Path) -> FederationRun:
    """Run one real quickstart and split its wall time into site work and the rest."""
    from fedmed.cli.simulate import ProgressPrinter
    from fedmed.config import load_config
    from fedmed.federation.simulation import simulate

    name = config_path.relative_to(REPO_ROOT).as_posix() if config_path.is_relative_to(REPO_ROOT) else str(config_path)
    benchmark_config = fresh_books_config(config_path, out_dir)
    config = load_config(benchmark_config)
    data_existed = config.data.root.is_dir()
    console.rule(f"[bold]1. quickstart federation: {name}")
    console.print(
        f"{name}: {config.task.kind} task, {len(config.data.sites)} sites, {config.model.name}, "
        f"{config.training.rounds} rounds x {config.training.local_epochs} local epochs; run folder {out_dir}"
    )
    started = time.perf_counter()
    status, results = simulate(
        config, benchmark_config, out_dir,
        on_event=ProgressPrinter(config.training.rounds),
        announce=lambda text: console.print(f"[dim]{text}[/]"),
    )
    wall = time.perf_counter() - started
    cpus_per_site = config.simulation.cpus_per_site
    concurrency = max(1, min(len(config.data.sites), (os.cpu_count() or 1) // cpus_per_site))
    if results is None:
        console.print(f"[bold red]federation failed[/] ({status.status}): {status.details}")
        console.print(f"Flower's log: {out_dir / 'flower.log'}")
        failed = Section(f"{name} federation failed", ["measure", "value"],
                         [["status", f"{status.status} (no results.json)"], ["wall s", f"{wall:.1f}"]], [])
        return FederationRun(name, str(config.task.kind), config.model.name, wall, None, None, concurrency,
                             "", None, [failed])

    metric = results["task"]["metric"]
    key, label = metric["key"], metric["label"]
    sites = results["sites"]
    per_site = [
        [
            site, _fmt(s["train_seconds"], ".1f"), _fmt(s["eval_seconds"], ".1f"),
            _fmt(s["train_seconds"] + s["eval_seconds"], ".1f"), str(s["rounds_trained"]),
            _fmt(s.get(key), ".3f"), _fmt(s["epsilon"], ".2f"), _fmt(s["noise_multiplier"], ".3f"),
        ]
        for site, s in sites.items()
    ]
    site_work = sum(s["train_seconds"] + s["eval_seconds"] for s in sites.values())
    server_run = results["wall_seconds"]
    pooled = results["global"].get(key)
    summary = [
        ["status", f"{status.status} / results: {results['status']}"],
        ["data folder existed before the run", "yes" if data_existed else "no (generated in this run, inside wall)"],
        ["wall: simulate() call, s", f"{wall:.1f}"],
        ["server run (results.json wall_seconds), s", f"{server_run:.1f}"],
        ["engine start-up + shutdown (wall - server run), s", f"{wall - server_run:.1f}"],
        ["site work: sum over sites of train_seconds + eval_seconds, s", f"{site_work:.1f}"],
        ["framework overhead: wall / site work (serial)", _ratio(wall, site_work)],
        [
            f"concurrency = min({len(sites)} sites, {os.cpu_count()} cpus // {cpus_per_site} cpus_per_site)",
            str(concurrency),
        ],
        ["wall / (site work / concurrency)", _ratio(wall, site_work / concurrency)],
        ["server run / (site work / concurrency)", _ratio(server_run, site_work / concurrency)],
        [f"pooled test {label}", _fmt(pooled, ".3f")],
    ]
    notes = [
        "site work = each site's own timing of its train and evaluate handlers "
        "(data loading, privacy plan, DP-SGD, evaluation), summed over rounds and sites.",
        "wall / site work > 1: time outside the sites' work (Flower/Ray start-up, process "
        "start, messages, aggregation). Sites run concurrently, so the serial ratio "
        "understates the overhead; the concurrency-adjusted ratio is the fairer one.",
    ]
    sections = [
        Section(f"{name}: wall time vs site work", ["measure", "value"], summary, notes),
        Section(
            f"{name}: per site",
            ["site", "train s", "eval s", "site work s", "rounds", label, "epsilon", "noise"],
            per_site, [],
        ),
    ]
    return FederationRun(name, str(config.task.kind), config.model.name, wall, server_run, site_work, concurrency,
                         label, pooled, sections)


def federation_summary(runs: Sequence[FederationRun]) -> Section:
    """One row per quickstart config, measured one after another in this run."""
    rows = [
        [
            run.config, run.task, run.model, f"{run.wall:.1f}", _fmt(run.server_run, ".1f"), _fmt(run.site_work, ".1f"),
            "n/a" if run.site_work is None else _ratio(run.wall, run.site_work / run.concurrency),
            "failed" if run.server_run is None else f"{run.metric_label} {_fmt(run.pooled, '.3f')}",
        ]
        for run in runs
    ]
    return Section(
        "every quickstart federation (local models and pooled baseline off)",
        ["config", "task", "model", "wall s", "server run s", "site work s", "wall / (work / conc.)", "pooled test"],
        rows,
        ["wall includes writing the demo data when its folder did not exist (see each config's table)."],
    )


def _ratio(numerator: float, denominator: float) -> str:
    return "n/a" if denominator <= 0 else f"{numerator / denominator:.2f}"


# ---------------------------------------------------------------------------- throughput


class SampleCounter:
    """Counts the images that reach a model (Poisson batches vary in size)."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.count += int(inputs[0].shape[0])

    def remove(self) -> None:
        self._handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def binary_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE on one logit; an empty Poisson batch gives a zero loss with the graph intact."""
    if not len(labels):
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), labels)


def segmentation_loss(logits: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
    """MONAI DiceCE on (N, H, W[, D]) label maps; Dice per sample (batch=False), as DP-SGD needs."""
    if not len(label_maps):
        return logits.sum() * 0.0
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)(logits, label_maps.unsqueeze(1))


def random_dataset(n: int, *, shape: tuple[int, ...], segmentation: bool, seed: int) -> TensorDataset:
    """Random images (volumes) with random labels, or random label maps for a segmenter."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, *shape, generator=generator)
    if segmentation:
        targets = torch.randint(0, SEGMENTATION_CLASSES, (n, *shape), generator=generator)
    else:
        targets = torch.randint(0, 2, (n,), generator=generator).float()
    return TensorDataset(images, targets)


def train_plain(model: nn.Module, dataset: TensorDataset, *, loss: Loss, batch_size: int, device: torch.device) -> None:
    """One epoch of ordinary mini-batch SGD: the non-private baseline."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=True):
        optimizer.zero_grad(set_to_none=True)
        images, targets = images.to(device), targets.to(device)
        loss(model(images), targets).backward()
        optimizer.step()


def train_dp(model: nn.Module, dataset: TensorDataset, *, loss: Loss, batch_size: int, device: torch.device) -> float:
    """One epoch of DP-SGD through fedmed's train_private; returns the accounting seconds."""
    # With one batch (the warm-up) Poisson's sample rate is 1 and the PRV accountant takes
    # log(1 - q) = -inf, which it handles; numpy would still warn about it.
    with np.errstate(divide="ignore"):
        return _train_dp(model, dataset, loss=loss, batch_size=batch_size, device=device)


def _train_dp(model: nn.Module, dataset: TensorDataset, *, loss: Loss, batch_size: int, device: torch.device) -> float:
    from fedmed.config import PrivacyConfig
    from fedmed.privacy import plan_privacy, train_private
    from fedmed.privacy.accountant import epsilon_of
    from fedmed.privacy.randomness import SecureRandomness

    plan = plan_privacy(
        PrivacyConfig(noise_multiplier=1.0, delta=1e-5),
        site="benchmark", n_train=len(dataset), batch_size=batch_size, local_epochs=1, rounds=1,
    )
    outcome = train_private(
        model, dataset, plan, loss=loss, history=[], epochs=1, learning_rate=LEARNING_RATE,
        randomness=SecureRandomness(), momentum=MOMENTUM, device=device,
    )
    started = time.perf_counter()  # what train_private spent on its final epsilon, again
    epsilon_of(outcome.history, delta=plan.delta, accountant=plan.accountant)
    return time.perf_counter() - started


@dataclass
class Throughput:
    """Timed passes of one model in one mode: (samples seen, seconds) per repeat."""

    passes: list[tuple[int, float]]
    accounting_seconds: float | None = None

    @property
    def rates(self) -> list[float]:
        return sorted(n / s for n, s in self.passes)

    @property
    def best(self) -> float:
        return self.rates[-1]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def best_pass(self) -> tuple[int, float]:
        return max(self.passes, key=lambda p: p[0] / p[1])


def input_spec(name: str, *, image_size: int, volume_shape: tuple[int, int, int]) -> InputConfig:
    """The model's input: ``image_size`` squares for a 2-D network, ``volume_shape`` volumes for a 3-D one."""
    from fedmed.config import InputConfig, SampleUnit, VolumeConfig
    from fedmed.models import model_spatial_dims

    if model_spatial_dims(name) == 3:
        return InputConfig(sample=SampleUnit.SERIES, volume=VolumeConfig(shape=volume_shape))
    return InputConfig(image_size=image_size, channels=1)


def measure(name: str, *, private: bool, samples: int, repeats: int, batch_size: int, spec: InputConfig,
            device: torch.device) -> Throughput:
    """Warm up on one batch, then time ``repeats`` epochs of ``samples`` random images."""
    from fedmed.models import ModelKind, create_model, model_kind

    segmentation = model_kind(name) is ModelKind.SEGMENTER
    loss = segmentation_loss if segmentation else binary_loss
    torch.manual_seed(0)
    model = create_model(name, spec=spec, outputs=SEGMENTATION_CLASSES if segmentation else 1)
    train = train_dp if private else train_plain
    shape = tuple(spec.spatial_shape)
    warm_up = random_dataset(batch_size, shape=shape, segmentation=segmentation, seed=1)
    train(model, warm_up, loss=loss, batch_size=batch_size, device=device)
    dataset = random_dataset(samples, shape=shape, segmentation=segmentation, seed=2)
    passes, accounting = [], []
    for _ in range(repeats):
        counter = SampleCounter(model)
        _sync(device)
        started = time.perf_counter()
        accounting.append(train(model, dataset, loss=loss, batch_size=batch_size, device=device))
        _sync(device)
        passes.append((counter.count, time.perf_counter() - started))
        counter.remove()
    return Throughput(passes, statistics.median(accounting) if private else None)


def benchmark_throughput(
    models: Sequence[str], samples: dict[str, int], *, repeats: int, batch_size: int, image_size: int,
    volume_shape: tuple[int, int, int], device: torch.device,
) -> list[Section]:
    """Samples/s of every model, non-private against DP-SGD (best of ``repeats`` passes)."""
    from fedmed.models import ModelKind, model_kind

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    console.rule("[bold]2. DP vs non-private training throughput")
    volume = "x".join(map(str, volume_shape))
    console.print(
        f"{image_size}x{image_size} images ({volume} volumes for 3-D networks), 1 channel, batch {batch_size}, "
        f"random data, device {_device_name(device)}, torch threads {torch.get_num_threads()} (os.cpu_count()), "
        f"best of {repeats} passes"
    )
    rows = []
    for name in models:
        n = samples[name]
        spec = input_spec(name, image_size=image_size, volume_shape=volume_shape)
        console.print(f"[dim]{name}: {repeats} x {n} samples non-private, then DP ...[/]")
        plain, dp = (
            measure(name, private=private, samples=n, repeats=repeats, batch_size=batch_size,
                    spec=spec, device=device)
            for private in (False, True)
        )
        (plain_n, plain_s), (dp_n, dp_s) = plain.best_pass(), dp.best_pass()
        loss = "DiceCE" if model_kind(name) is ModelKind.SEGMENTER else "BCE"
        rows.append([
            name, "x".join(map(str, spec.spatial_shape)), loss,
            str(plain_n), f"{plain_s:.2f}", f"{plain.best:.1f} ({plain.median:.1f})",
            str(dp_n), f"{dp_s:.2f}", f"{dp.best:.1f} ({dp.median:.1f})",
            f"{dp.best / plain.best:.3f}", f"{plain.best / dp.best:.1f}x", _fmt(dp.accounting_seconds, ".2f"),
        ])
    notes = [
        f"batch {batch_size}, 1 channel, random images, device {_device_name(device)}, "
        f"torch.set_num_threads({threads}); one warm-up batch, then {repeats} timed passes per model and mode.",
        f"loss: BCE on one logit and random labels (classifiers); MONAI DiceCELoss(to_onehot_y, softmax) on "
        f"random label maps of {SEGMENTATION_CLASSES} classes (segmenters, one logit map per class).",
        "samples/s: best pass (median of passes in brackets); n and s are the best pass's. Ratio and "
        "slowdown compare best passes. On a shared machine a pass can be >10x slower when another "
        "process takes a core (torch's threads wait on a descheduled peer): a low median shows it.",
        "DP = fedmed.privacy.train_private, PrivacyConfig(noise_multiplier=1.0, delta=1e-5) via "
        "plan_privacy, Poisson sampling (the DP sample count varies); its time includes Opacus "
        "set-up and the final PRV epsilon ('accounting s', timed again separately, median).",
    ]
    headers = [
        "model", "input", "loss", "non-private n", "non-private s", "non-private samples/s",
        "DP n", "DP s", "DP samples/s", "DP / non-private", "slowdown", "accounting s",
    ]
    return [Section("training throughput: DP-SGD vs non-private", headers, rows, notes)]


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-federation", action="store_true", help="skip the quickstart federations")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the DP vs non-private throughput")
    parser.add_argument("--out", type=Path, help="keep each federation's run folder under here, one per config "
                        "(default: a temporary folder)")
    parser.add_argument("--configs", nargs="+", metavar="YAML",
                        help="quickstart configs to run (default: every configs/quickstart*.yaml)")
    parser.add_argument("--samples", type=int, help="timed samples for every model (default: per model, "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_SAMPLES.items()) + ")")
    parser.add_argument("--model-samples", action="append", default=[], metavar="NAME=N",
                        help="timed samples for one model, e.g. densenet121=128 (repeatable)")
    parser.add_argument(
        "--models", nargs="+", metavar="NAME",
        help="models to measure (default: every 2-D network and the 3-D segmenters)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes per model and mode; the best counts (default 3)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument(
        "--volume-shape", type=int, nargs=3, default=(16, 32, 32), metavar=("D", "H", "W"),
        help="volume shape for 3-D networks (default 16 32 32)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.samples is not None and args.samples < args.batch_size:
        parser.error(f"--samples {args.samples} is below --batch-size {args.batch_size}")
    return args


def _config_path(text: str) -> Path:
    path = Path(text).resolve()
    if not path.is_file():
        shipped = ", ".join(p.relative_to(REPO_ROOT).as_posix() for p in quickstart_configs())
        raise SystemExit(f"--configs: no file {text}; the quickstarts are {shipped}")
    return path


def samples_per_model(args: argparse.Namespace, models: Sequence[str]) -> dict[str, int]:
    samples = {name: args.samples or DEFAULT_SAMPLES.get(name, FALLBACK_SAMPLES) for name in models}
    for item in args.model_samples:
        name, _, count = item.partition("=")
        if name not in samples or not count.isdigit() or int(count) < args.batch_size:
            raise SystemExit(
                f"--model-samples {item!r}: expected NAME=N with NAME one of {', '.join(models)} "
                f"and N at least the batch size {args.batch_size}"
            )
        samples[name] = int(count)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from fedmed.models import ModelKind, available_models, check_model_input, check_model_name

    default = available_models(2) + available_models(3, kind=ModelKind.SEGMENTER)
    models = [check_model_name(name) for name in args.models] if args.models else default
    for name in models:  # a size a network cannot take fails here, not after minutes of measuring
        check_model_input(name, input_spec(name, image_size=args.image_size, volume_shape=tuple(args.volume_shape)))
    samples = samples_per_model(args, models)
    configs = [_config_path(text) for text in args.configs] if args.configs else quickstart_configs()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    sections = [machine_section(device)]
    show(sections[0])

    runs: list[FederationRun] = []
    if not args.skip_federation:
        with tempfile.TemporaryDirectory(prefix="fedmed-bench-") as tmp:
            for config_path in configs:
                out_dir = (args.out if args.out is not None else Path(tmp)) / config_path.stem
                runs.append(benchmark_federation(config_path, out_dir))
                for section in runs[-1].sections:
                    show(section)
        summary = federation_summary(runs)
        show(summary)
        sections += [section for run in runs for section in run.sections] + [summary]
    if not args.skip_throughput:
        throughput = benchmark_throughput(
            models, samples, repeats=args.repeats, batch_size=args.batch_size, image_size=args.image_size,
            volume_shape=tuple(args.volume_shape), device=device,
        )
        for section in throughput:
            show(section)
        sections += throughput

    console.rule("[bold]markdown")
    print("\n\n".join(to_markdown(section) for section in sections))
    command = " ".join(["python simulations/benchmark_quickstart.py", *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\n_benchmark took {time.perf_counter() - started:.0f} s, load average at the end {load}: `{command}`_")
    return 1 if any(run.server_run is None for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
