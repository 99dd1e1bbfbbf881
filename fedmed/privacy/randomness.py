"""Where a site's DP-SGD randomness comes from: the operating system's CSPRNG.

DP-SGD's guarantee holds only if nobody but the site can predict its Poisson sampling and
its Gaussian noise. A generator seeded from anything the server sends (a run seed, a
round number) lets the server replay the noise and subtract it from the released update,
leaving the clipped-gradient sum in the clear. So every bit here comes from the
operating system's CSPRNG: each draw is a ChaCha20 key stream under a fresh 256-bit key
from ``os.urandom``, the construction the Linux kernel's own generator uses, about eight
times faster than reading ``os.urandom`` for every byte (simulations/benchmark_noise.py).

The Gaussian follows Opacus' ``secure_mode`` recipe, which needs ``torchcsprng`` (no
current wheels): four samples summed and halved, so that the floating-point support of
one sample no longer identifies it (Holohan & Braghin 2021, section 5.1; Opacus
``_generate_noise``). Each sample is a Box-Muller pair computed in float64 from 53-bit
uniforms, then rounded to the gradient's dtype.

:class:`SeededRandomness` is the opt-out for bit-for-bit reproducible simulations: it
draws from torch's generator, seeded from the run's plan, which the server knows. Sites
accept it only in simulation and only when their policy says so.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_UNIFORM_BYTES = 8
_MANTISSA_BITS = 53
_SECURE_SAMPLES = 4
"""Opacus' secure_mode sums 2n Gaussian samples with n = 2 (complexity 2^159 for an attacker)."""


class Randomness(Protocol):
    """The two random draws DP-SGD makes: which records a batch holds, and the noise."""

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        """``n`` booleans, each True with probability ``rate``, independently."""
        ...

    def gaussian(self, shape: torch.Size, std: float, *, dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor of independent N(0, std^2) values."""
        ...


class SecureRandomness:
    """Sampling and noise from the operating system's CSPRNG (ChaCha20 keyed by ``os.urandom``)."""

    def random_bytes(self, n: int) -> bytearray:
        """``n`` bytes of a ChaCha20 key stream under a fresh key from ``os.urandom``."""
        stream = bytearray(n)
        encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None).encryptor()
        encryptor.update_into(bytes(n), stream)
        return stream

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 values, uniform on the open interval (0, 1), 53 random bits each."""
        if n == 0:
            return torch.zeros(0, dtype=torch.float64)
        words = torch.frombuffer(self.random_bytes(_UNIFORM_BYTES * n), dtype=torch.int64)
        bits = (words >> (64 - _MANTISSA_BITS)) & ((1 << _MANTISSA_BITS) - 1)
        return bits.to(torch.float64).add_(0.5).mul_(2.0**-_MANTISSA_BITS)

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        return (self.uniform(n) < rate).numpy()

    def standard_normal(self, n: int) -> torch.Tensor:
        """``n`` float64 N(0, 1) values by the Box-Muller transform (both of each pair used)."""
        pairs = (n + 1) // 2
        uniform = self.uniform(2 * pairs)
        radius = torch.sqrt(-2.0 * torch.log(uniform[:pairs]))
        angle = uniform[pairs:].mul_(2.0 * math.pi)
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]

    def gaussian(self, shape: torch.Size, std: float, *, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        samples = self.standard_normal(_SECURE_SAMPLES * n).view(_SECURE_SAMPLES, n)
        # four N(0, std^2) samples summed have variance 4 std^2: halve them
        return samples.sum(dim=0).mul_(std / 2.0).to(dtype).reshape(shape)


class SeededRandomness:
    """UNSAFE: torch's generator from a seed the server chose, for reproducible simulation only.

    Whoever knows the seed (the server) can replay the noise and remove it from the update:
    no differential privacy against the server remains.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        return (torch.rand(n, generator=self.generator, dtype=torch.float64) < rate).numpy()

    def gaussian(self, shape: torch.Size, std: float, *, dtype: torch.dtype) -> torch.Tensor:
        return torch.normal(0.0, std, size=tuple(shape), generator=self.generator, dtype=dtype)


def bootstrap_seed() -> int:
    """A seed for the evaluation bootstrap that the server cannot choose or predict."""
    return int.from_bytes(os.urandom(8), "little")
