"""What the site's own CSPRNG costs DP-SGD, against torch's seeded generator, side by side.

Two tables, both measured in one run on this machine:

1. Noise generation alone: N(0, 1) values per second from ``SecureRandomness.gaussian``
   (a ChaCha20 stream keyed by os.urandom, float64 Box-Muller, four samples summed as Opacus' secure_mode does)
   against ``SeededRandomness.gaussian`` (one torch.normal call).
2. One DP-SGD epoch of ``train_private`` per registered model, with each source, same
   data and plan: seconds per step and the ratio. This is what a site pays per round.

Run from the repository root with the project's environment active:

    python simulations/benchmark_noise.py                       # about a minute on 2 CPUs
    python simulations/benchmark_noise.py --models small_cnn --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import Section, console, show, to_markdown  # noqa: E402

from fedmed.config import InputConfig, PrivacyConfig, TaskConfig  # noqa: E402
from fedmed.models import available_models, create_model  # noqa: E402
from fedmed.privacy import plan_privacy, train_private  # noqa: E402
from fedmed.privacy.randomness import SecureRandomness, SeededRandomness  # noqa: E402
from fedmed.tasks import create_task  # noqa: E402

BINARY = create_task(TaskConfig())

SOURCES = {
    "torch generator (seeded, unsafe)": lambda: SeededRandomness(0),
    "ChaCha20 keyed by os.urandom (fedmed)": SecureRandomness,
}


def _best(seconds: list[float]) -> float:
    return min(seconds)


def noise_throughput(sizes: list[int], repeats: int) -> Section:
    rows = []
    for size in sizes:
        rates = {}
        for name, make in SOURCES.items():
            randomness = make()
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                randomness.gaussian(torch.Size([size]), 1.0, dtype=torch.float32)
                timings.append(time.perf_counter() - started)
            rates[name] = size / _best(timings) / 1e6
        seeded, secure = rates.values()
        rows.append([f"{size:,}", f"{seeded:.1f}", f"{secure:.1f}", f"{seeded / secure:.1f}x"])
    return Section(
        "Gaussian noise: million values per second (best of repeats)",
        ["values", *SOURCES, "slowdown"], rows,
        [
            "fedmed draws four float64 Box-Muller samples per value (Opacus' secure_mode recipe), "
            "each draw a ChaCha20 stream under a fresh os.urandom key"
        ],
    )


def step_time(models: list[str], *, samples: int, batch_size: int, image_size: int, repeats: int) -> Section:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(samples, 1, image_size, image_size, generator=generator)
    labels = (torch.arange(samples) % 2).float()
    dataset = TensorDataset(images, labels)
    plan = plan_privacy(
        PrivacyConfig(noise_multiplier=1.0, delta=1e-5), site="benchmark", n_train=samples,
        batch_size=batch_size, local_epochs=1, rounds=1,
    )
    rows = []
    for name in models:
        per_step = {}
        for source, make in SOURCES.items():
            timings = []
            for _ in range(repeats):
                torch.manual_seed(0)
                model = create_model(name, spec=InputConfig(image_size=image_size))
                started = time.perf_counter()
                outcome = train_private(
                    model, dataset, plan, loss=BINARY.loss, history=[], epochs=1, learning_rate=0.1,
                    randomness=make(),
                    device=torch.device("cpu"),
                )
                timings.append((time.perf_counter() - started) / outcome.steps)
            per_step[source] = statistics.median(timings)
        seeded, secure = per_step.values()
        parameters = sum(p.numel() for p in create_model(name, spec=InputConfig(image_size=image_size)).parameters())
        rows.append([name, f"{parameters:,}", f"{seeded:.3f}", f"{secure:.3f}", f"{secure / seeded:.2f}"])
    return Section(
        f"One DP-SGD step, CPU ({samples} images {image_size}x{image_size}, expected batch {batch_size}): "
        "seconds (median of repeats)",
        ["model", "parameters", *SOURCES, "ratio"], rows,
        [f"threads: {torch.get_num_threads()}; each timing is a whole train_private epoch divided by its steps"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=available_models())
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 7_000_000])
    args = parser.parse_args()
    sections = [
        noise_throughput(args.sizes, args.repeats),
        step_time(args.models, samples=args.samples, batch_size=args.batch_size, image_size=args.image_size,
                  repeats=args.repeats),
    ]
    for section in sections:
        show(section)
    console.print()
    for section in sections:
        console.print(to_markdown(section) + "\n")


if __name__ == "__main__":
    main()
