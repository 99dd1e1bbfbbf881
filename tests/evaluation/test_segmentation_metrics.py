"""Tests for fedmed.evaluation.segmentation: Dice and HD95 against MONAI and hand cases, pooling exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from fedmed.evaluation.segmentation import (
    dice_per_case,
    dice_sums,
    hd95_per_case,
    mean_interval,
    pooled_dice,
    pooled_global_dice,
    voxel_sums,
)


def square(size: int, top: int, left: int, side: int, label: int = 1) -> np.ndarray:
    image = np.zeros((size, size), dtype=np.int64)
    image[top : top + side, left : left + side] = label
    return image


def random_maps(rng: np.random.Generator, n: int, shape: tuple[int, ...], n_structures: int) -> np.ndarray:
    """Blobby label maps: a coarse random grid upsampled, so structures have surfaces."""
    coarse = rng.integers(0, n_structures + 1, (n, *(s // 4 for s in shape)))
    for axis in range(1, coarse.ndim):
        coarse = np.repeat(coarse, 4, axis=axis)
    return coarse


def monai_dice(predicted: np.ndarray, target: np.ndarray, n_structures: int, *, ignore_empty: bool) -> np.ndarray:
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=ignore_empty)
    y_pred = one_hot(torch.as_tensor(predicted)[:, None], n_structures + 1)
    y = one_hot(torch.as_tensor(target)[:, None], n_structures + 1)
    return metric(y_pred, y).double().numpy()


def monai_hd95(predicted: np.ndarray, target: np.ndarray, n_structures: int, spacing=None) -> np.ndarray:  # noqa: ANN001
    metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    y_pred = one_hot(torch.as_tensor(predicted)[:, None], n_structures + 1)
    y = one_hot(torch.as_tensor(target)[:, None], n_structures + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(y_pred, y, spacing=spacing).double().numpy()


# ---------------------------------------------------------------- Dice


class TestDicePerCase:
    def test_hand_cases(self) -> None:
        empty = np.zeros((8, 8), dtype=np.int64)
        a = square(8, 0, 0, 4)  # 16 voxels
        half = square(8, 0, 0, 4)
        half[2:, :] = 0  # 8 voxels, all inside a
        predicted = np.stack([a, a, empty, a, empty, half])
        target = np.stack([a, square(8, 4, 4, 4), empty, empty, a, a])
        dice = dice_per_case(predicted, target, n_structures=1)
        assert dice.shape == (6, 1)
        np.testing.assert_allclose(dice[:, 0], [1.0, 0.0, np.nan, 0.0, 0.0, 2 * 8 / (8 + 16)])

    def test_two_structures_each_own_column(self) -> None:
        target = square(8, 0, 0, 4, label=1) + square(8, 4, 4, 4, label=2)
        predicted = square(8, 0, 0, 4, label=1)  # structure 2 missed
        dice = dice_per_case(predicted[None], target[None], n_structures=2)
        np.testing.assert_allclose(dice, [[1.0, 0.0]])
        # a third structure in neither map is NaN, not 0 or 1
        assert np.isnan(dice_per_case(predicted[None], target[None], n_structures=3)[0, 2])

    @pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)], ids=["2d", "3d"])
    def test_matches_monai_where_reference_is_present(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        predicted, target = random_maps(rng, 6, shape, 3), random_maps(rng, 6, shape, 3)
        target[0][target[0] == 2] = 0  # one empty reference cell, predicted anyway
        ours = dice_per_case(predicted, target, n_structures=3)
        assert ours[0, 1] == 0.0  # a false positive on an empty reference counts
        assert np.isnan(monai_dice(predicted, target, 3, ignore_empty=True)[0, 1])  # MONAI hides it
        np.testing.assert_allclose(ours, monai_dice(predicted, target, 3, ignore_empty=False), atol=1e-6)

    def test_both_empty_is_nan_where_monai_says_one(self) -> None:
        empty = np.zeros((1, 8, 8), dtype=np.int64)
        assert np.isnan(dice_per_case(empty, empty, n_structures=1)[0, 0])
        assert monai_dice(empty, empty, 1, ignore_empty=False)[0, 0] == 1.0

    @pytest.mark.parametrize(
        "predicted, target, n_structures, pattern",
        [
            (np.zeros((2, 8, 8), int), np.zeros((2, 8, 9), int), 1, r"map \(2, 8, 8\) and target \(2, 8, 9\)"),
            (np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), 1, "predicted label map must hold integers 0..1, not float64"),
            (np.full((2, 8, 8), 3), np.zeros((2, 8, 8), int), 2, r"labels 3..3, outside 0..2 \(n_structures=2\)"),
            (np.zeros((2, 8, 8), int), np.full((2, 8, 8), -1), 1, "target label map holds labels -1..-1"),
            (np.zeros((8, 8), int), np.zeros((8, 8), int), 1, r"\(N, H, W\) or \(N, D, H, W\), not shape \(8, 8\)"),
            (np.zeros((2, 3, 8, 8, 8), int), np.zeros((2, 3, 8, 8, 8), int), 1, "not one-hot channels"),
            (np.zeros((2, 8, 8), int), np.zeros((2, 8, 8), int), 0, "n_structures must be at least 1"),
        ],
        ids=["shape", "float", "label-too-high", "negative", "no-batch", "one-hot", "no-structures"],
    )
    def test_refuses_bad_maps(self, predicted, target, n_structures: int, pattern: str) -> None:  # noqa: ANN001
        with pytest.raises(ValueError, match=pattern):
            dice_per_case(predicted, target, n_structures=n_structures)


# ---------------------------------------------------------------- HD95


class TestHd95PerCase:
    def test_hand_cases(self) -> None:
        a = square(16, 0, 0, 4)
        shifted = square(16, 0, 3, 4)  # 3 columns to the right
        empty = np.zeros((16, 16), dtype=np.int64)
        hd = hd95_per_case(np.stack([a, shifted, empty, a, empty]), np.stack([a, a, a, empty, empty]), n_structures=1)
        assert hd[0, 0] == 0.0
        assert hd[1, 0] == pytest.approx(monai_hd95(shifted[None], a[None], 1)[0, 0])
        assert 0 < hd[1, 0] <= 3.0
        assert np.isnan(hd[2:, 0]).all()  # either empty: undefined

    @pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)], ids=["2d", "3d"])
    def test_matches_monai(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(1)
        predicted, target = random_maps(rng, 4, shape, 2), random_maps(rng, 4, shape, 2)
        np.testing.assert_allclose(hd95_per_case(predicted, target, n_structures=2), monai_hd95(predicted, target, 2))

    def test_spacing_scales_distances(self) -> None:
        a, shifted = square(16, 4, 0, 4), square(16, 4, 4, 4)
        in_voxels = hd95_per_case(shifted[None], a[None], n_structures=1)[0, 0]
        in_mm = hd95_per_case(shifted[None], a[None], n_structures=1, spacing=(1.0, 0.5))[0, 0]
        assert in_mm == pytest.approx(in_voxels * 0.5)  # the shift is along columns
        expected = monai_hd95(shifted[None], a[None], 1, spacing=(1.0, 0.5))[0, 0]
        assert in_mm == pytest.approx(expected)

    @pytest.mark.parametrize("spacing", [(1.0,), (1.0, 0.0), (1.0, 1.0, 1.0)])
    def test_refuses_bad_spacing(self, spacing: tuple[float, ...]) -> None:
        maps = np.zeros((1, 8, 8), dtype=np.int64)
        with pytest.raises(ValueError, match=r"one positive voxel size per spatial axis \(2\)"):
            hd95_per_case(maps, maps, n_structures=1, spacing=spacing)


# ---------------------------------------------------------------- interval


class TestMeanInterval:
    def test_brackets_the_mean_and_drops_nan(self) -> None:
        values = np.random.default_rng(2).uniform(0.5, 0.9, 40)
        low, high = mean_interval(np.append(values, [np.nan, np.nan]), n_resamples=500)
        assert low < values.mean() < high
        assert (low, high) == mean_interval(values, n_resamples=500)  # NaNs changed nothing

    def test_wider_with_higher_confidence_and_deterministic(self) -> None:
        values = np.random.default_rng(3).uniform(0.0, 1.0, 30)
        low90, high90 = mean_interval(values, confidence=0.90, seed=5)
        low99, high99 = mean_interval(values, confidence=0.99, seed=5)
        assert low99 < low90 and high90 < high99
        assert mean_interval(values, confidence=0.90, seed=5) == (low90, high90)

    @pytest.mark.parametrize(
        "values", [[], [0.7], [0.7, np.nan], [0.5, 0.5, 0.5]], ids=["none", "one", "one-and-nan", "constant"]
    )
    def test_none_without_variability(self, values: list[float]) -> None:
        assert mean_interval(np.array(values)) is None

    def test_refuses_a_matrix(self) -> None:
        with pytest.raises(ValueError, match=r"one structure's values \(N,\), not shape \(3, 2\); pass dice\[:, s\]"):
            mean_interval(np.zeros((3, 2)))


# ---------------------------------------------------------------- pooling


class TestPooledDice:
    def test_equals_the_dice_over_concatenated_cases(self) -> None:
        rng = np.random.default_rng(4)
        sites = []
        for n in (5, 9, 2):
            predicted, target = random_maps(rng, n, (16, 16), 3), random_maps(rng, n, (16, 16), 3)
            target[0][target[0] == 3] = 0
            predicted[0][predicted[0] == 3] = 0  # an empty-both cell: excluded, not counted as 0 or 1
            sites.append((predicted, target))
        released = [dice_sums(dice_per_case(p, t, n_structures=3)) for p, t in sites]
        all_predicted = np.concatenate([p for p, _ in sites])
        all_target = np.concatenate([t for _, t in sites])
        pooled = pooled_dice(released)
        expected = np.nanmean(dice_per_case(all_predicted, all_target, n_structures=3), axis=0)
        np.testing.assert_allclose(pooled, expected, rtol=1e-12)
        assert sum(r[2][0] for r in released) == len(all_target) - 3  # one empty-both cell per site

    def test_global_dice_equals_dice_of_all_voxels(self) -> None:
        rng = np.random.default_rng(5)
        sites = [(random_maps(rng, n, (16, 16), 2), random_maps(rng, n, (16, 16), 2)) for n in (3, 4)]
        pooled = pooled_global_dice([voxel_sums(p, t, n_structures=2) for p, t in sites])
        predicted = np.concatenate([p for p, _ in sites]).reshape(1, -1, 16)  # every case as one image
        target = np.concatenate([t for _, t in sites]).reshape(1, -1, 16)
        np.testing.assert_allclose(pooled, dice_per_case(predicted, target, n_structures=2)[0])

    def test_structure_nobody_has_is_none(self) -> None:
        assert pooled_dice([[(0, 0.0), (3, 2.4)], [(0, 0.0), (1, 1.0)]]) == [None, pytest.approx(0.85)]
        assert pooled_global_dice([[(0, 0, 0)]]) == [None]
        assert pooled_dice([]) == []

    @pytest.mark.parametrize(
        "sites, pattern",
        [
            ([[(2, 1.0)], [(2, 1.0), (1, 0.5)]], "site 1 released Dice sums for 2 structures, site 0 for 1"),
            ([[(2, 2.5)]], r"site 0 released an impossible Dice sum for structure 1: 2.5 over 2 cases"),
            ([[(1, 0.5)], [(-1, 0.0)]], "site 1 released an impossible Dice sum"),
            ([[(1, -0.1)]], "impossible Dice sum"),
        ],
        ids=["structures", "sum-above-n", "negative-n", "negative-sum"],
    )
    def test_refuses_inconsistent_releases(self, sites, pattern: str) -> None:  # noqa: ANN001
        with pytest.raises(ValueError, match=pattern):
            pooled_dice(sites)

    def test_refuses_impossible_voxel_sums(self) -> None:
        with pytest.raises(ValueError, match="impossible voxel sums for structure 1: intersection 5, predicted 4"):
            pooled_global_dice([[(5, 4, 9)]])
        with pytest.raises(ValueError, match="site 1 released voxel sums for 2 structures"):
            pooled_global_dice([[(1, 2, 2)], [(1, 2, 2), (0, 0, 0)]])

    def test_dice_sums_refuses_a_vector(self) -> None:
        with pytest.raises(ValueError, match=r"dice must be \(cases, structures\), not shape \(4,\)"):
            dice_sums(np.zeros(4))
