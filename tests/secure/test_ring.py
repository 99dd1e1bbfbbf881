"""The fixed-point ring: encodings sum exactly, decode to the weighted mean, refuse overflow."""

from __future__ import annotations

import numpy as np
import pytest

from fedmed.secure.ring import RING, SCALE, RingOverflowError, add_mask, decode, encode, expand_mask

KEY = bytes(range(32))


def test_sum_of_encodings_decodes_to_the_weighted_mean_within_quantization() -> None:
    rng = np.random.default_rng(0)
    updates = [rng.normal(scale=0.05, size=1000).astype(np.float32) for _ in range(3)]
    counts = [120, 450, 33]
    fractions = [c / sum(counts) for c in counts]
    total = sum(encode(u, f, n_sites=3) for u, f in zip(updates, fractions, strict=True))
    assert total.dtype == RING and total.size == 1001
    mean, weight = decode(total)
    expected = sum(c * u.astype(np.float64) for u, c in zip(updates, counts, strict=True)) / sum(counts)
    assert weight == pytest.approx(1.0, abs=3 / SCALE)
    assert np.max(np.abs(mean - expected)) <= 3 * 0.5 / SCALE


def test_survivors_are_weighted_among_themselves() -> None:
    """Two of three sites: the weights no longer sum to 1, and the mean is theirs alone."""
    a, b = np.full(5, 0.25), np.full(5, -0.5)
    mean, weight = decode(encode(a, 0.2, n_sites=3) + encode(b, 0.4, n_sites=3))
    assert weight == pytest.approx(0.6, abs=2 / SCALE)
    np.testing.assert_allclose(mean, (0.2 * a + 0.4 * b) / 0.6, atol=1e-6)


def test_negative_values_survive_the_unsigned_ring() -> None:
    update = np.array([-1.5, 0.0, 2.25, -3e-7])
    mean, weight = decode(encode(update, 1.0, n_sites=2))
    assert weight == 1.0
    np.testing.assert_allclose(mean, update, atol=0.5 / SCALE)


def test_an_update_that_could_wrap_the_sum_is_refused() -> None:
    fits = 2.0**31 / SCALE / 3 / 0.5  # 1/3 of the signed range at weight 0.5: about 85
    encode(np.array([fits * 0.99]), 0.5, n_sites=3)
    with pytest.raises(RingOverflowError, match="does not fit 3 times into the 32-bit ring"):
        encode(np.array([-fits * 1.01]), 0.5, n_sites=3)
    with pytest.raises(RingOverflowError, match="does not fit 10 times"):
        encode(np.array([fits * 0.99]), 0.5, n_sites=10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_updates_are_refused(bad: float) -> None:
    with pytest.raises(RingOverflowError, match="NaN or infinite"):
        encode(np.array([0.1, bad]), 0.5, n_sites=2)


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_a_weight_must_be_a_fraction(weight: float) -> None:
    with pytest.raises(RingOverflowError, match="fraction of the round's examples"):
        encode(np.zeros(3), weight, n_sites=2)


def test_masks_cancel_and_hide() -> None:
    encoded = encode(np.linspace(-1, 1, 200_001), 0.7, n_sites=2)  # not a multiple of the chunk
    masked = encoded.copy()
    add_mask(masked, KEY)
    assert np.mean(masked == encoded) < 1e-3
    add_mask(masked, KEY, subtract=True)
    np.testing.assert_array_equal(masked, encoded)


def test_a_mask_is_a_deterministic_uniform_key_stream() -> None:
    mask = expand_mask(KEY, 100_000)
    np.testing.assert_array_equal(mask, expand_mask(KEY, 100_000))
    assert not np.array_equal(mask, expand_mask(bytes(32), 100_000))
    assert mask.dtype == RING
    top_bytes = (mask >> np.uint32(24)).astype(np.int64)
    counts = np.bincount(top_bytes, minlength=256)
    assert counts.min() > 250 and counts.max() < 550  # about 390 each
    # the stream is chunked internally; chunks continue the same stream
    np.testing.assert_array_equal(expand_mask(KEY, 70_000), mask[:70_000])


def test_mask_keys_are_full_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(b"short", 10)
