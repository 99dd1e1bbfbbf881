"""Tests for fedmed.privacy.randomness: sampling and noise the server cannot predict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmed.privacy.randomness import SecureRandomness, SeededRandomness, bootstrap_seed


def test_uniforms_are_open_interval_and_uniform() -> None:
    values = SecureRandomness().uniform(200_000).numpy()
    assert values.dtype == np.float64
    assert values.min() > 0 and values.max() < 1
    assert values.mean() == pytest.approx(0.5, abs=0.005)
    histogram, _ = np.histogram(values, bins=10, range=(0, 1))
    assert histogram.min() > 0.95 * 20_000 and histogram.max() < 1.05 * 20_000


def test_gaussian_noise_has_the_requested_spread_and_dtype() -> None:
    noise = SecureRandomness().gaussian(torch.Size([400, 500]), 0.7, dtype=torch.float32)
    assert noise.shape == (400, 500) and noise.dtype == torch.float32
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(noise.std()) == pytest.approx(0.7, rel=0.01)
    # tails as a Gaussian's: about 0.27% beyond 3 standard deviations
    assert float((noise.abs() > 3 * 0.7).float().mean()) == pytest.approx(0.0027, abs=0.0006)


def test_odd_sizes_and_scalars() -> None:
    randomness = SecureRandomness()
    assert randomness.uniform(0).shape == (0,)
    assert randomness.poisson_mask(0, 0.5).shape == (0,)
    assert randomness.gaussian(torch.Size([7]), 1.0, dtype=torch.float64).shape == (7,)
    assert randomness.gaussian(torch.Size([]), 1.0, dtype=torch.float64).shape == ()


def test_poisson_mask_includes_each_record_at_the_rate() -> None:
    mask = SecureRandomness().poisson_mask(100_000, 0.125)
    assert mask.dtype == bool and mask.mean() == pytest.approx(0.125, abs=0.004)


def test_each_draw_takes_a_fresh_key() -> None:
    randomness = SecureRandomness()
    assert randomness.random_bytes(64) != randomness.random_bytes(64)


def test_two_draws_never_repeat_and_ignore_torchs_seed() -> None:
    randomness = SecureRandomness()
    torch.manual_seed(0)
    first = randomness.gaussian(torch.Size([1000]), 1.0, dtype=torch.float64)
    torch.manual_seed(0)
    second = randomness.gaussian(torch.Size([1000]), 1.0, dtype=torch.float64)
    assert not torch.equal(first, second)
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.15


def test_seeded_randomness_repeats_itself() -> None:
    """The unsafe opt-out: the same seed, the same draws (what a server could replay)."""
    a, b = SeededRandomness(3), SeededRandomness(3)
    assert torch.equal(a.gaussian(torch.Size([50]), 1.0, dtype=torch.float32),
                       b.gaussian(torch.Size([50]), 1.0, dtype=torch.float32))
    assert np.array_equal(a.poisson_mask(50, 0.3), b.poisson_mask(50, 0.3))


def test_bootstrap_seeds_differ() -> None:
    seeds = {bootstrap_seed() for _ in range(20)}
    assert len(seeds) == 20 and all(0 <= s < 2**64 for s in seeds)
    assert math.log2(max(seeds)) > 50
