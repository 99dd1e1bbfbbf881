"""Tests for the AUROC interval, sensitivity/specificity, calibration and equalized odds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import recall_score, roc_auc_score

from fedmed.evaluation import (
    auroc_interval,
    equalized_odds_difference,
    expected_calibration_error,
    roc_auc,
    sensitivity_specificity,
)
from fedmed.evaluation.metrics import _mann_whitney_auroc


def binormal(rng: np.random.Generator, n_pos: int, n_neg: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with true AUROC Phi(separation / sqrt(2))."""
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    scores = rng.normal(0, 1, n_pos + n_neg) + separation * labels
    return labels, scores


# ---------------------------------------------------------------- the bootstrap statistic


@pytest.mark.parametrize("seed, n, decimals", [(0, 40, 1), (1, 200, 2), (2, 150, 8), (3, 9, 0)])
def test_statistic_matches_sklearn_including_ties(seed: int, n: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n) + 0.3 * labels, decimals)  # decimals=0/1: many ties
    statistic = _mann_whitney_auroc(scores[labels == 1], scores[labels == 0])
    assert statistic == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_statistic_is_vectorised_over_resamples() -> None:
    rng = np.random.default_rng(4)
    positives = np.round(rng.random((5, 30)) + 0.2, 1)
    negatives = np.round(rng.random((5, 40)), 1)
    batch = _mann_whitney_auroc(positives, negatives)
    one_by_one = [_mann_whitney_auroc(p, n) for p, n in zip(positives, negatives, strict=True)]
    np.testing.assert_allclose(batch, one_by_one, atol=1e-12)


# ---------------------------------------------------------------- auroc_interval


def test_interval_contains_the_auroc_and_is_reproducible() -> None:
    labels, scores = binormal(np.random.default_rng(5), 70, 80, 1.0)
    low, high = auroc_interval(labels, scores, seed=3)
    assert 0.0 <= low < roc_auc(labels, scores) < high <= 1.0
    assert auroc_interval(labels, scores, seed=3) == (low, high)
    assert auroc_interval(labels, scores, seed=4) != (low, high)


def test_interval_narrows_with_more_data() -> None:
    rng = np.random.default_rng(6)
    widths = []
    for n in (30, 300, 1000):
        low, high = auroc_interval(*binormal(rng, n, n, 1.0))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_interval_width_matches_delong() -> None:
    labels, scores = binormal(np.random.default_rng(7), 800, 1200, 1.0)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    # DeLong et al. 1988: the AUROC's variance from the per-case placement values.
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    variance = wins.mean(axis=1).var(ddof=1) / positives.size + wins.mean(axis=0).var(ddof=1) / negatives.size
    expected = 2 * norm.ppf(0.975) * np.sqrt(variance)
    low, high = auroc_interval(labels, scores, n_resamples=2000)
    assert high - low == pytest.approx(expected, rel=0.15)


def test_interval_coverage_is_plausible() -> None:
    rng = np.random.default_rng(8)
    separation = 1.0
    truth = norm.cdf(separation / np.sqrt(2))
    covered = 0
    trials = 200
    for trial in range(trials):
        low, high = auroc_interval(*binormal(rng, 60, 60, separation), confidence=0.9, n_resamples=400, seed=trial)
        covered += low <= truth <= high
    assert 0.8 <= covered / trials <= 0.97  # nominal 0.9; percentile intervals run a little narrow


def test_interval_is_fast() -> None:
    import time

    labels, scores = binormal(np.random.default_rng(9), 75, 75, 1.0)
    auroc_interval(labels, scores)  # warm up imports
    start = time.perf_counter()
    auroc_interval(labels, scores, n_resamples=1000)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "labels, scores",
    [([1, 1, 1], [0.1, 0.5, 0.9]), ([0, 0], [0.3, 0.2]), ([], []), ([1, 0], [0.9, 0.1])],
    ids=["positives-only", "negatives-only", "empty", "one-of-each"],
)
def test_interval_is_none_without_two_classes_to_resample(labels: list[int], scores: list[float]) -> None:
    assert auroc_interval(np.array(labels), np.array(scores)) is None


@pytest.mark.parametrize(
    "labels, scores",
    [([1, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.95, 0.3]), ([1, 1, 1, 1, 0], [0.9, 0.1, 0.2, 0.95, 0.3])],
    ids=["one-positive", "one-negative"],
)
def test_interval_with_a_single_case_of_one_class(labels: list[int], scores: list[float]) -> None:
    low, high = auroc_interval(np.array(labels), np.array(scores))
    assert 0.0 <= low <= roc_auc(np.array(labels), np.array(scores)) <= high <= 1.0


def test_interval_of_perfect_separation_is_a_point() -> None:
    assert auroc_interval(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == (1.0, 1.0)


# ---------------------------------------------------------------- sensitivity_specificity


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.8)])
def test_sensitivity_specificity_match_sklearn_recall(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # some scores equal the threshold
    predicted = (scores >= threshold).astype(int)
    sensitivity, specificity = sensitivity_specificity(labels, scores, threshold=threshold)
    assert sensitivity == pytest.approx(recall_score(labels, predicted, pos_label=1))
    assert specificity == pytest.approx(recall_score(labels, predicted, pos_label=0))


def test_threshold_itself_counts_positive() -> None:
    assert sensitivity_specificity(np.array([1, 0]), np.array([0.5, 0.5])) == (1.0, 0.0)


@pytest.mark.parametrize(
    "labels, expected", [([1, 1], (0.5, None)), ([0, 0], (None, 0.5)), ([], (None, None))]
)
def test_sensitivity_specificity_none_for_an_absent_class(labels: list[int], expected: tuple) -> None:
    scores = np.array([0.9, 0.1][: len(labels)])
    assert sensitivity_specificity(np.array(labels), scores) == expected


# ---------------------------------------------------------------- expected_calibration_error


def test_ece_hand_case() -> None:
    # bin [0.1, 0.2): scores 0.15, 0.15, labels 0, 1 -> |0.5 - 0.15| = 0.35, weight 2/5
    # bin [0.8, 0.9): scores 0.85 x3, labels 1, 1, 1 -> |1 - 0.85| = 0.15, weight 3/5
    labels = np.array([0, 1, 1, 1, 1])
    scores = np.array([0.15, 0.15, 0.85, 0.85, 0.85])
    assert expected_calibration_error(labels, scores) == pytest.approx(0.4 * 0.35 + 0.6 * 0.15)


@pytest.mark.parametrize("seed, bins", [(0, 10), (1, 5), (2, 20)])
def test_ece_matches_sklearn_calibration_curve(seed: int, bins: int) -> None:
    rng = np.random.default_rng(seed)
    # scores away from bin edges, where sklearn and fedmed might place them differently
    centres = rng.integers(0, bins, 500)
    scores = (centres + rng.uniform(0.1, 0.9, 500)) / bins
    labels = (rng.random(500) < scores**1.5).astype(int)  # miscalibrated
    observed, predicted = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
    counts = np.bincount(centres, minlength=bins)
    weights = counts[counts > 0] / labels.size  # calibration_curve drops empty bins
    expected = float(np.sum(weights * np.abs(observed - predicted)))
    assert expected_calibration_error(labels, scores, bins=bins) == pytest.approx(expected, abs=1e-12)


def test_ece_puts_a_score_of_one_in_the_last_bin() -> None:
    # both in [0.9, 1.0]: mean score 0.95, mean label 0.5
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.9])) == pytest.approx(0.45)


def test_ece_of_nothing_and_of_perfect_calibration() -> None:
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


# ---------------------------------------------------------------- equalized_odds_difference


@pytest.mark.parametrize(
    "rates, expected",
    [
        ([(0.9, 0.8), (0.7, 0.75)], 0.2),  # TPR gap 0.2 > FPR gap 0.05
        ([(0.8, 0.9), (0.78, 0.6)], 0.3),  # FPR 0.1 vs 0.4
        ([(0.8, 0.9), (0.7, 0.85), (0.75, 0.6)], 0.3),  # range over three groups
        ([(0.8, 0.9), (0.8, 0.9)], 0.0),
        ([(0.8, 0.9), (None, 0.5), (0.7, None), (0.75, 0.9)], 0.05),  # incomplete groups skipped
        ([(0.8, 0.9)], None),
        ([(0.8, 0.9), (None, 0.2)], None),
        ([], None),
    ],
)
def test_equalized_odds_difference(rates: list[tuple], expected: float | None) -> None:
    result = equalized_odds_difference(rates)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)
        assert isinstance(result, float)


def test_equalized_odds_accepts_a_generator() -> None:
    assert equalized_odds_difference(r for r in [(1.0, 1.0), (0.5, 1.0)]) == pytest.approx(0.5)
