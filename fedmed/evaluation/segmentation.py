"""Segmentation metrics as pure functions of label maps, and what a site releases to pool them.

Label maps are integer arrays (N, *spatial), 2-D or 3-D, with 0 for background and 1..S for
the foreground structures. Metrics come per case and structure, (N, S), with NaN where a value
is undefined, so that means, intervals and pooling skip those cells explicitly.

Empty structures follow nnU-Net's evaluation (Isensee et al., Nature Methods 2021) and the
advice of Metrics Reloaded (Maier-Hein et al., Nature Methods 2024) to decide them explicitly:
a structure absent from both prediction and reference has no Dice (NaN); a structure predicted
where the reference has none scores Dice 0, a false positive that counts. MONAI's
``DiceMetric(ignore_empty=True)`` differs there: it makes every empty-reference cell NaN,
false positives included, which hides errors on cases without the structure.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy.stats import bootstrap

DiceSum = tuple[int, float]
"""(cases with a Dice, sum of their Dice) for one structure: what a site releases."""

VoxelSums = tuple[int, int, int]
"""(intersection, predicted, reference) voxel counts for one structure, over a site's cases."""


def dice_per_case(predicted: np.ndarray, target: np.ndarray, *, n_structures: int) -> np.ndarray:
    """Dice 2|P∩T| / (|P|+|T|) per case and foreground structure (Dice 1945, Sørensen 1948).

    Args:
        predicted: label map (N, *spatial), integers 0..n_structures.
        target: reference label map of the same shape.
        n_structures: S, the number of foreground structures (background 0 excluded).

    Returns:
        (N, S) float64: column s-1 is structure s; NaN where both prediction and reference
        lack the structure, 0 where only one of them has it.

    Raises:
        ValueError: shapes differ, the maps are not integers, or a label lies outside 0..S.
    """
    predicted, target = _check_label_maps(predicted, target, n_structures=n_structures)
    intersection, predicted_sum, target_sum = _voxel_counts(predicted, target, n_structures)
    denominator = predicted_sum + target_sum
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator > 0, 2.0 * intersection / denominator, np.nan)
    return dice


def hd95_per_case(
    predicted: np.ndarray,
    target: np.ndarray,
    *,
    n_structures: int,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance per case and foreground structure.

    MONAI's ``compute_hausdorff_distance(percentile=95)``: the 95th percentile of the
    distances from each surface voxel of one mask to the other's surface, both directions
    pooled (Huttenlocher et al., IEEE TPAMI 1993; the robust variant used by the BraTS
    benchmark, Menze et al., IEEE TMI 2015).

    Args:
        predicted: label map (N, *spatial), integers 0..n_structures.
        target: reference label map of the same shape.
        n_structures: S, the number of foreground structures.
        spacing: voxel size per spatial axis (e.g. mm) to measure in; None: in voxels of the
            model's grid, which after resizing is not a physical unit.

    Returns:
        (N, S) float64; NaN where prediction or reference lacks the structure: a distance to
        nothing is undefined (MONAI would return NaN or infinity with a warning). Report
        those cells by count, not as a distance: a missed structure is worse than any HD95.

    Raises:
        ValueError: as ``dice_per_case``, or ``spacing`` has the wrong length or a value <= 0.
    """
    predicted, target = _check_label_maps(predicted, target, n_structures=n_structures)
    spatial_dims = predicted.ndim - 1
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != spatial_dims or min(spacing) <= 0:
            raise ValueError(
                f"spacing {spacing} must give one positive voxel size per spatial axis ({spatial_dims}); "
                "pass None to measure in voxels"
            )
    result = np.full((predicted.shape[0], n_structures), np.nan)
    for structure in range(1, n_structures + 1):
        pred_mask, true_mask = predicted == structure, target == structure
        flat_axes = tuple(range(1, predicted.ndim))
        defined = np.flatnonzero(pred_mask.any(axis=flat_axes) & true_mask.any(axis=flat_axes))
        if not defined.size:
            continue
        with warnings.catch_warnings():
            # MONAI 1.6 warns about its own internal use of a deprecated argument.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            distances = compute_hausdorff_distance(
                torch.as_tensor(pred_mask[defined, None]),
                torch.as_tensor(true_mask[defined, None]),
                include_background=True,  # the one channel is the structure
                percentile=95,
                spacing=spacing,
            )
        result[defined, structure - 1] = distances[:, 0].double().numpy()
    return result


def mean_interval(
    values: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean over cases (Efron & Tibshirani 1993, ch. 13).

    NaN cells (structure undefined in that case) are dropped first. None with fewer than two
    values or when all are equal: resampling then has nothing to vary.

    Raises:
        ValueError: ``values`` is not one-dimensional (pass one structure's column).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"mean_interval takes one structure's values (N,), not shape {values.shape}; pass dice[:, s]")
    values = values[~np.isnan(values)]
    if values.size < 2 or values.min() == values.max():
        return None
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def dice_sums(dice: np.ndarray) -> list[DiceSum]:
    """Per structure (cases with a Dice, their Dice sum): all a site releases for the pooled mean Dice.

    Args:
        dice: (N, S) from ``dice_per_case``; NaN cells are not counted.
    """
    dice = np.asarray(dice, dtype=np.float64)
    if dice.ndim != 2:
        raise ValueError(f"dice must be (cases, structures), not shape {dice.shape}")
    defined = ~np.isnan(dice)
    return [(int(defined[:, s].sum()), float(np.nansum(dice[:, s]))) for s in range(dice.shape[1])]


def pooled_dice(sites: Sequence[Sequence[DiceSum]]) -> list[float | None]:
    """Mean per-case Dice over every site's cases pooled, per structure: Σ sums / Σ n.

    Exactly the mean of ``dice_per_case`` over the concatenated cases, without any mask or
    per-case value leaving a site. None for a structure no site has a Dice for.

    Raises:
        ValueError: sites report different numbers of structures, or a release is impossible
            (a negative count, or a sum outside [0, n]).
    """
    if not sites:
        return []
    n_structures = len(sites[0])
    for index, released in enumerate(sites):
        if len(released) != n_structures:
            raise ValueError(
                f"site {index} released Dice sums for {len(released)} structures, site 0 for {n_structures}; "
                "every site must evaluate the same task"
            )
        for structure, (n, total) in enumerate(released, start=1):
            if n < 0 or not 0.0 <= total <= n + 1e-9:
                raise ValueError(
                    f"site {index} released an impossible Dice sum for structure {structure}: "
                    f"{total} over {n} cases (a sum of Dice lies in [0, n])"
                )
    pooled: list[float | None] = []
    for s in range(n_structures):
        n = sum(released[s][0] for released in sites)
        pooled.append(sum(released[s][1] for released in sites) / n if n else None)
    return pooled


def voxel_sums(predicted: np.ndarray, target: np.ndarray, *, n_structures: int) -> list[VoxelSums]:
    """Per structure (intersection, predicted, reference) voxels over all of a site's cases.

    For a global Dice (all cases' voxels as one volume), which large structures dominate;
    the per-case mean of ``pooled_dice`` weighs every case alike.
    """
    predicted, target = _check_label_maps(predicted, target, n_structures=n_structures)
    both, pred, true = (c.sum(axis=0) for c in _voxel_counts(predicted, target, n_structures))
    return [(int(both[s]), int(pred[s]), int(true[s])) for s in range(n_structures)]


def pooled_global_dice(sites: Sequence[Sequence[VoxelSums]]) -> list[float | None]:
    """Global Dice 2 Σ intersection / (Σ predicted + Σ reference) per structure over all sites.

    None for a structure that no site predicted or has.

    Raises:
        ValueError: sites report different numbers of structures, or impossible counts.
    """
    if not sites:
        return []
    n_structures = len(sites[0])
    for index, released in enumerate(sites):
        if len(released) != n_structures:
            raise ValueError(
                f"site {index} released voxel sums for {len(released)} structures, site 0 for {n_structures}; "
                "every site must evaluate the same task"
            )
        for structure, (both, pred, true) in enumerate(released, start=1):
            if min(both, pred, true) < 0 or both > min(pred, true):
                raise ValueError(
                    f"site {index} released impossible voxel sums for structure {structure}: "
                    f"intersection {both}, predicted {pred}, reference {true}"
                )
    pooled: list[float | None] = []
    for s in range(n_structures):
        both = sum(released[s][0] for released in sites)
        total = sum(released[s][1] + released[s][2] for released in sites)
        pooled.append(2.0 * both / total if total else None)
    return pooled


def _check_label_maps(predicted: np.ndarray, target: np.ndarray, *, n_structures: int) -> tuple[np.ndarray, np.ndarray]:
    predicted, target = np.asarray(predicted), np.asarray(target)
    if n_structures < 1:
        raise ValueError(f"n_structures must be at least 1 (foreground structures), got {n_structures}")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted label map {predicted.shape} and target {target.shape} must have the same shape")
    if predicted.ndim not in (3, 4):
        raise ValueError(
            f"label maps must be (N, H, W) or (N, D, H, W), not shape {predicted.shape}; "
            "pass argmax(logits, axis=1), not one-hot channels"
        )
    for name, labels in (("predicted", predicted), ("target", target)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"{name} label map must hold integers 0..{n_structures}, not {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() > n_structures):
            raise ValueError(
                f"{name} label map holds labels {int(labels.min())}..{int(labels.max())}, "
                f"outside 0..{n_structures} (n_structures={n_structures})"
            )
    return predicted, target


def _voxel_counts(predicted: np.ndarray, target: np.ndarray, n_structures: int) -> tuple[np.ndarray, ...]:
    """(intersection, predicted, reference) voxel counts, each (N, S)."""
    n = predicted.shape[0]
    pred_flat, true_flat = predicted.reshape(n, -1), target.reshape(n, -1)
    counts = np.zeros((3, n, n_structures), dtype=np.int64)
    for s in range(1, n_structures + 1):
        pred_mask, true_mask = pred_flat == s, true_flat == s
        counts[0, :, s - 1] = (pred_mask & true_mask).sum(axis=1)
        counts[1, :, s - 1] = pred_mask.sum(axis=1)
        counts[2, :, s - 1] = true_mask.sum(axis=1)
    return counts[0], counts[1], counts[2]
