"""Shamir secret sharing of 32-byte secrets, t of n, on PyCryptodome's GF(2^128) scheme.

PyCryptodome shares 16-byte secrets; a 32-byte secret is shared as two halves under the
same share indices, so one share is 32 bytes. Indices run 1..n.
"""

from __future__ import annotations

from Crypto.Protocol.SecretSharing import Shamir

SECRET_BYTES = 32
_HALF = SECRET_BYTES // 2


def split_secret(secret: bytes, *, threshold: int, holders: int) -> list[bytes]:
    """``holders`` shares of ``secret``; any ``threshold`` of them rebuild it, fewer reveal nothing.

    Share ``i`` (0-based in the list) has Shamir index ``i + 1``.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    if not 1 <= threshold <= holders:
        raise ValueError(f"threshold {threshold} must lie between 1 and {holders}")
    low = Shamir.split(threshold, holders, secret[:_HALF], ssss=False)
    high = Shamir.split(threshold, holders, secret[_HALF:], ssss=False)
    return [a + b for (_, a), (_, b) in zip(low, high, strict=True)]


def combine_shares(shares: dict[int, bytes]) -> bytes:
    """The secret from shares keyed by their 1-based index (pass exactly the threshold)."""
    low = [(index, share[:_HALF]) for index, share in shares.items()]
    high = [(index, share[_HALF:]) for index, share in shares.items()]
    return Shamir.combine(low, ssss=False) + Shamir.combine(high, ssss=False)
