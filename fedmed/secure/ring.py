"""Fixed-point encoding of a model update into the ring of integers mod 2^64, and masks.

Masking needs integers: a float plus a random float leaks the magnitude, an integer plus a
uniform integer mod 2^64 leaks nothing. A site encodes ``weight * round(x * 2^24)`` for
every value ``x`` of its update, and the weight itself last, so the server can divide the
unmasked sum by the total weight (FedAvg weighted by examples). 2^-24 (6e-8) is below
float32's resolution at unit scale. Nothing is clipped: a site whose update would not fit
``n_sites`` times into the signed range refuses, because a wrapped sum decodes to garbage
that nobody would notice.

Masks are a ChaCha20 key stream: a full 256-bit key, a cryptographic generator, not a
seeded Mersenne Twister.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedmed.errors import FedmedError

FRACTION_BITS = 24
SCALE = float(1 << FRACTION_BITS)
SIGNED_MAX = (1 << 63) - 1
_NONCE = bytes(16)  # every mask key is used once: derived per run, round and pair
_CHUNK = 1 << 16  # values per key-stream chunk: 512 KiB, stays in cache


class RingOverflowError(FedmedError):
    """An update too large to be summed over this many sites without wrapping around."""


def encode(update: np.ndarray, weight: int, *, n_sites: int) -> np.ndarray:
    """``[weight * round(update * 2^24)..., weight]`` as uint64, checked to fit ``n_sites`` times.

    Raises:
        RingOverflowError: the weighted update could overflow the sum of ``n_sites`` sites.
    """
    if weight < 1:
        raise RingOverflowError(f"an update must carry a positive weight, not {weight}")
    fixed = np.multiply(np.ravel(update), SCALE, dtype=np.float64)
    np.rint(fixed, out=fixed)
    largest = max(-float(fixed.min(initial=0.0)), float(fixed.max(initial=0.0))) * weight
    if not np.isfinite(largest):
        raise RingOverflowError("the update holds NaN or infinite values; nothing to aggregate")
    limit = SIGNED_MAX // max(n_sites, 1)
    if max(largest, weight) > limit:
        raise RingOverflowError(
            f"the update's largest value {largest / weight / SCALE:.4g} times weight {weight} "
            f"does not fit {n_sites} times into the 64-bit ring; the update has diverged"
        )
    encoded = np.empty(fixed.size + 1, dtype=np.int64)
    encoded[:-1] = fixed
    encoded[:-1] *= weight
    encoded[-1] = weight
    return encoded.view(np.uint64)


def decode(total: np.ndarray) -> tuple[np.ndarray, int]:
    """The weighted mean update and the total weight, from an unmasked sum of encodings."""
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    weight = int(signed[-1])
    if weight < 1:
        raise RingOverflowError(f"the sum's total weight is {weight}: the masks did not cancel")
    return signed[:-1].astype(np.float64) / (SCALE * weight), weight


def add_mask(vector: np.ndarray, key: bytes, *, subtract: bool = False) -> None:
    """Add (or subtract) the ChaCha20 key stream of a 32-byte key to a uint64 vector, in place.

    The stream is made chunk by chunk into one reused buffer: for 8M values that runs at
    the cipher's speed instead of the allocator's.
    """
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    chunk = min(_CHUNK, vector.size)
    zeros, stream = bytes(8 * chunk), bytearray(8 * chunk)
    values = np.frombuffer(stream, dtype="<u8")
    for start in range(0, vector.size, chunk):
        part = vector[start : start + chunk]
        encryptor.update_into(zeros[: 8 * part.size], stream)
        if subtract:
            part -= values[: part.size]
        else:
            part += values[: part.size]


def expand_mask(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint64 values: the mask that ``add_mask`` adds for ``key``."""
    mask = np.zeros(length, dtype=np.uint64)
    add_mask(mask, key)
    return mask
