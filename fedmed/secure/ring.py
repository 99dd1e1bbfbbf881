"""Fixed-point encoding of a model update into the ring of integers mod 2^32, and masks.

Masking needs integers: a float plus a random float leaks the magnitude, an integer plus a
uniform integer mod 2^32 leaks nothing. A site encodes ``round(f * x * 2^24)`` for every
value ``x`` of its update, where ``f`` is its share of the round's examples (FedAvg's
weight, at most 1), and ``round(f * 2^24)`` last, so the server divides the unmasked sum
by the survivors' total weight whoever dropped. 2^-24 (6e-8) is below float32's
resolution at unit scale, and a masked update is 4 bytes a value, as many as the float32
it replaces. Nothing is clipped: a site whose weighted update would not fit ``n_sites``
times into the signed range (about ``|f * x| < 128 / n_sites``: a diverged model) refuses,
because a wrapped sum decodes to garbage that nobody would notice.

Masks are a ChaCha20 key stream: a full 256-bit key, a cryptographic generator, not a
seeded Mersenne Twister.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedmed.errors import FedmedError

RING = np.dtype("<u4")
"""Masked vectors and their sums: unsigned 32-bit, wrapping mod 2^32."""
FRACTION_BITS = 24
SCALE = float(1 << FRACTION_BITS)
SIGNED_MAX = (1 << 31) - 1
_NONCE = bytes(16)  # every mask key is used once: derived per run, round and pair
_CHUNK = 1 << 16  # values per key-stream chunk: 256 KiB, stays in cache


class RingOverflowError(FedmedError):
    """An update too large to be summed over this many sites without wrapping around."""


def encode(update: np.ndarray, weight: float, *, n_sites: int) -> np.ndarray:
    """``[round(weight * update * 2^24)..., round(weight * 2^24)]`` in the ring.

    ``weight`` is the site's fraction of the round's examples. The values are checked to
    fit ``n_sites`` times into the signed range.

    Raises:
        RingOverflowError: the weight is not in (0, 1], the update is not finite, or the
            sum of ``n_sites`` such updates could wrap.
    """
    if not 0 < weight <= 1:
        raise RingOverflowError(f"a site's weight is its fraction of the round's examples, not {weight}")
    fixed = np.multiply(np.ravel(update), weight * SCALE, dtype=np.float64)
    np.rint(fixed, out=fixed)
    largest = max(-float(fixed.min(initial=0.0)), float(fixed.max(initial=0.0)))
    if not np.isfinite(largest):
        raise RingOverflowError("the update holds NaN or infinite values; nothing to aggregate")
    if largest > SIGNED_MAX // max(n_sites, 1):
        raise RingOverflowError(
            f"the update's largest value {largest / weight / SCALE:.4g} at weight {weight:.3g} does not "
            f"fit {n_sites} times into the 32-bit ring; the update has diverged"
        )
    encoded = np.empty(fixed.size + 1, dtype=np.int32)
    encoded[:-1] = fixed
    encoded[-1] = max(1, round(weight * SCALE))
    return encoded.view(RING)


def decode(total: np.ndarray) -> tuple[np.ndarray, float]:
    """The weighted mean update and the summed weight, from an unmasked sum of encodings."""
    signed = np.asarray(total, dtype=RING).view(np.int32)
    weight = int(signed[-1])
    if weight < 1:
        raise RingOverflowError(f"the sum's total weight is {weight}: the masks did not cancel")
    return signed[:-1] / weight, weight / SCALE


def add_mask(vector: np.ndarray, key: bytes, *, subtract: bool = False) -> None:
    """Add (or subtract) the ChaCha20 key stream of a 32-byte key to a ring vector, in place.

    The stream is made chunk by chunk into one reused buffer: for 8M values that runs at
    the cipher's speed instead of the allocator's.
    """
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    chunk = min(_CHUNK, vector.size)
    width = RING.itemsize
    zeros, stream = bytes(width * chunk), bytearray(width * chunk)
    values = np.frombuffer(stream, dtype=RING)
    for start in range(0, vector.size, chunk):
        part = vector[start : start + chunk]
        encryptor.update_into(zeros[: width * part.size], stream)
        if subtract:
            part -= values[: part.size]
        else:
            part += values[: part.size]


def expand_mask(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform ring values: the mask that ``add_mask`` adds for ``key``."""
    mask = np.zeros(length, dtype=RING)
    add_mask(mask, key)
    return mask
