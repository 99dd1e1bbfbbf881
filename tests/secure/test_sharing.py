"""Shamir t-of-n sharing of 32-byte secrets."""

from __future__ import annotations

import itertools
import os

import pytest

from fedmed.secure.sharing import combine_shares, split_secret


def test_any_threshold_subset_rebuilds_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, holders=5)
    assert all(len(share) == 32 for share in shares)
    for subset in itertools.combinations(range(5), 3):
        assert combine_shares({i + 1: shares[i] for i in subset}) == secret


def test_fewer_shares_than_the_threshold_do_not() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, holders=5)
    assert combine_shares({1: shares[0], 4: shares[3]}) != secret


def test_shares_are_fresh_each_time() -> None:
    secret = os.urandom(32)
    assert split_secret(secret, threshold=2, holders=3) != split_secret(secret, threshold=2, holders=3)


@pytest.mark.parametrize(("secret", "threshold", "holders"), [(b"x" * 16, 2, 3), (b"x" * 32, 4, 3), (b"x" * 32, 0, 3)])
def test_bad_arguments_are_refused(secret: bytes, threshold: int, holders: int) -> None:
    with pytest.raises(ValueError):
        split_secret(secret, threshold=threshold, holders=holders)
