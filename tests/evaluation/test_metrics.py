"""Tests for fedmed.evaluation.metrics: AUROC against scikit-learn, histograms, accuracy, scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmed.config import InputConfig
from fedmed.evaluation import (
    SCORE_BINS,
    accuracy,
    pooled_auroc,
    predict_scores,
    roc_auc,
    roc_auc_from_histograms,
    score_groups,
    score_histograms,
)
from fedmed.models import create_model

CPU = torch.device("cpu")


# ---------------------------------------------------------------- roc_auc


@pytest.mark.parametrize(
    "labels, scores, expected",
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts half
        ([0, 0, 1], [0.2, 0.6, 0.6], 0.75),  # one win, one tie
        ([0, 1, 1, 0], [0.2, 0.2, 0.9, 0.9], 0.5),
        ([0, 1, 0, 1, 1], [0.9, 0.8, 0.1, 0.3, 0.05], 2 / 6),
    ],
)
def test_roc_auc_small_cases(labels: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(expected, abs=1e-12)
    assert roc_auc_score(labels, scores) == pytest.approx(expected, abs=1e-12)  # the hand values


@pytest.mark.parametrize("seed, n, positive_rate", [(0, 50, 0.5), (1, 500, 0.1), (2, 1000, 0.9), (3, 7, 0.5)])
def test_roc_auc_matches_sklearn(seed: int, n: int, positive_rate: float) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.random(n) + 0.3 * labels  # informative, not perfect
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_with_ties_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.2 * labels, 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_accepts_float_labels_and_float32_scores() -> None:
    labels = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
    scores = np.array([0.1, 0.4, 0.35, 0.8], dtype=np.float32)
    assert roc_auc(labels, scores) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "labels, scores",
    [([1, 1, 1], [0.1, 0.5, 0.9]), ([0, 0], [0.3, 0.2]), ([1], [0.7]), ([], [])],
    ids=["positives-only", "negatives-only", "single", "empty"],
)
def test_roc_auc_is_none_with_one_class(labels: list[int], scores: list[float]) -> None:
    assert roc_auc(np.array(labels), np.array(scores)) is None


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "labels, scores, threshold, expected",
    [
        ([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5], 0.5, 0.5),  # 0.4 misses a positive, 0.5 is positive
        ([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5], 0.3, 0.75),
        ([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.1], 0.5, 1.0),
        ([1, 1], [0.1, 0.2], 0.5, 0.0),
        ([0.0, 1.0, 1.0], [0.49, 0.5, 0.51], 0.5, 1.0),  # the threshold itself counts positive
    ],
)
def test_accuracy(labels: list[float], scores: list[float], threshold: float, expected: float) -> None:
    assert accuracy(np.array(labels), np.array(scores), threshold=threshold) == pytest.approx(expected)


def test_accuracy_of_nothing_is_zero() -> None:
    assert accuracy(np.array([]), np.array([])) == 0.0


# ---------------------------------------------------------------- histograms


@pytest.mark.parametrize("seed, n, bins", [(0, 100, SCORE_BINS), (1, 1000, 10), (2, 37, 1)])
def test_histogram_counts_sum_to_class_counts(seed: int, n: int, bins: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.random(n)
    scores[:3] = [0.0, 1.0, 0.5]  # edges included
    positives, negatives = score_histograms(labels, scores, bins=bins)
    assert positives.shape == negatives.shape == (bins,)
    assert positives.sum() == labels.sum()
    assert negatives.sum() == n - labels.sum()


def test_histogram_default_bins_and_edges() -> None:
    positives, negatives = score_histograms(np.array([1, 1, 0, 0]), np.array([1.0, 0.995, 0.0, 0.004]))
    assert positives.shape == (SCORE_BINS,)
    assert positives[-1] == 2 and positives.sum() == 2  # 1.0 falls in the last bin
    assert negatives[0] == 2 and negatives.sum() == 2


def test_histogram_clips_out_of_range_scores() -> None:
    positives, negatives = score_histograms(np.array([1, 0]), np.array([1.5, -0.2]), bins=4)
    np.testing.assert_array_equal(positives, [0, 0, 0, 1])
    np.testing.assert_array_equal(negatives, [1, 0, 0, 0])


def test_histogram_auroc_is_exact_when_scores_fall_in_distinct_bins() -> None:
    rng = np.random.default_rng(5)
    bins = 50
    chosen = rng.permutation(bins)[:30]  # 30 distinct bins
    scores = (chosen + 0.5) / bins  # bin centres
    labels = np.array([0, 1] * 15)
    rng.shuffle(labels)
    exact = roc_auc_score(labels, scores)
    assert roc_auc_from_histograms(*score_histograms(labels, scores, bins=bins)) == pytest.approx(exact, abs=1e-12)


def test_histogram_auroc_hand_case() -> None:
    positives, negatives = score_histograms(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert roc_auc_from_histograms(positives, negatives) == pytest.approx(0.75)


def test_histogram_auroc_counts_same_bin_as_a_tie() -> None:
    positives, negatives = np.array([0, 2, 1]), np.array([1, 2, 0])
    # pairs: 3 positives x 3 negatives = 9; wins: 2*1 + 1*3 = 5; same bin: 2*2 = 4 -> 5 + 2 = 7
    assert roc_auc_from_histograms(positives, negatives) == pytest.approx(7 / 9)


@pytest.mark.parametrize("seed, bins", [(0, SCORE_BINS), (1, 20), (2, 10)])
def test_histogram_auroc_is_close_to_sklearn(seed: int, bins: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    approx = roc_auc_from_histograms(*score_histograms(labels, scores, bins=bins))
    assert approx == pytest.approx(roc_auc_score(labels, scores), abs=1.0 / bins)


def test_summed_site_histograms_give_the_pooled_auroc() -> None:
    rng = np.random.default_rng(6)
    sites = []
    for shift in (0.0, 0.1, -0.1):
        labels = rng.integers(0, 2, 400)
        sites.append((labels, np.clip(rng.normal(0.45 + shift + 0.15 * labels, 0.15), 0, 1)))
    histograms = [score_histograms(labels, scores) for labels, scores in sites]
    positives = sum(h[0] for h in histograms)
    negatives = sum(h[1] for h in histograms)
    pooled_labels = np.concatenate([s[0] for s in sites])
    pooled_scores = np.concatenate([s[1] for s in sites])
    pooled = roc_auc_score(pooled_labels, pooled_scores)
    assert roc_auc_from_histograms(positives, negatives) == pytest.approx(pooled, abs=1.0 / SCORE_BINS)


@pytest.mark.parametrize(
    "positives, negatives", [([0, 0], [1, 2]), ([3, 1], [0, 0]), ([0, 0], [0, 0])]
)
def test_histogram_auroc_is_none_with_one_class(positives: list[int], negatives: list[int]) -> None:
    assert roc_auc_from_histograms(np.array(positives), np.array(negatives)) is None


# ---------------------------------------------------------------- predict_scores


@pytest.mark.parametrize("n, batch_size", [(10, 4), (3, 256), (8, 8)])
def test_predict_scores_are_probabilities(n: int, batch_size: int) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", spec=InputConfig(image_size=16))
    model.train()
    images = torch.rand(n, 1, 16, 16)
    scores = predict_scores(model, images, device=CPU, batch_size=batch_size)
    assert isinstance(scores, np.ndarray) and scores.shape == (n,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert not model.training  # evaluated in eval mode
    with torch.no_grad():
        expected = torch.sigmoid(model(images).squeeze(1)).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # standardising an empty batch
def test_predict_scores_without_images() -> None:
    model = create_model("small_cnn", spec=InputConfig(image_size=16))
    scores = predict_scores(model, torch.empty(0, 1, 16, 16), device=CPU)
    assert scores.shape == (0,)


def test_score_groups_cover_the_cell_size_and_every_case() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 95)
    scores = rng.random(95)
    patients = [f"p{i // 2}" for i in range(95)]  # two images a patient
    groups = score_groups(labels, scores, patients=patients, min_patients=10)
    assert sum(g[2] for g in groups) == labels.sum() and sum(g[2] + g[3] for g in groups) == 95
    assert all(a[1] < b[0] for a, b in zip(groups, groups[1:], strict=False))
    for low, high, _, _ in groups:
        binned = np.clip(np.digitize(scores, np.linspace(0, 1, SCORE_BINS + 1)[1:-1]), 0, SCORE_BINS - 1)
        members = np.flatnonzero((binned >= low) & (binned <= high))
        assert len({patients[i] for i in members}) >= 10


def test_a_site_of_fewer_patients_than_the_cell_is_one_group() -> None:
    groups = score_groups(np.array([1, 0, 1]), np.array([0.1, 0.5, 0.9]), patients=["a", "b", "c"], min_patients=10)
    assert groups == [(10, 90, 2, 1)]


def test_pooled_auroc_from_fine_groups_is_the_exact_pooled_auroc() -> None:
    rng = np.random.default_rng(5)
    sites = []
    for shift in (0.0, 0.1, -0.05):
        labels = rng.integers(0, 2, 300)
        scores = np.clip(0.5 + 0.2 * (labels - 0.5) + shift + 0.15 * rng.standard_normal(300), 0, 1)
        sites.append((labels, scores))
    released = [(score_groups(y, s, patients=list(range(len(y))), min_patients=1), roc_auc(y, s)) for y, s in sites]
    pooled = roc_auc(np.concatenate([y for y, _ in sites]), np.concatenate([s for _, s in sites]))
    assert pooled_auroc(released) == pytest.approx(pooled, abs=1.0 / SCORE_BINS)


def test_coarse_groups_pull_the_pooled_auroc_towards_one_half() -> None:
    rng = np.random.default_rng(6)
    sites = []
    for _ in range(3):
        labels = rng.integers(0, 2, 30)
        scores = np.clip(0.5 + 0.3 * (labels - 0.5) + 0.1 * rng.standard_normal(30), 0, 1)
        sites.append((labels, scores))
    coarse = [(score_groups(y, s, patients=list(range(30)), min_patients=10), roc_auc(y, s)) for y, s in sites]
    exact = roc_auc(np.concatenate([y for y, _ in sites]), np.concatenate([s for _, s in sites]))
    assert 0.5 < pooled_auroc(coarse) <= exact
    assert pooled_auroc([([(0, 99, 0, 5)], None)]) is None  # one class: no AUROC
