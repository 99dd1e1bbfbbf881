"""Tests for fedmed.evaluation.multilabel: per-label and one-vs-rest AUROC against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from fedmed.evaluation.metrics import auroc_interval, pooled_auroc, score_groups
from fedmed.evaluation.multilabel import (
    macro_auroc,
    multiclass_accuracy,
    one_vs_rest_auroc,
    per_label_auroc,
    per_label_auroc_interval,
    per_label_score_groups,
    pooled_label_aurocs,
)


def multilabel_data(seed: int, n: int = 80, n_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < [0.2, 0.5, 0.35][:n_labels]).astype(np.int64)
    scores = np.clip(0.3 * labels + rng.uniform(0, 0.7, (n, n_labels)), 0, 1)
    return labels, (np.minimum(np.floor(scores * 100), 99) + 0.5) / 100  # score-bin centres: ties, counted half


def multiclass_data(seed: int, n: int = 90, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes)) + 1.2 * np.eye(n_classes)[labels]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, scores


# ---------------------------------------------------------------- multi-label


class TestPerLabelAuroc:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_sklearn_per_label_and_macro(self, seed: int) -> None:
        labels, scores = multilabel_data(seed)
        ours = per_label_auroc(labels, scores)
        np.testing.assert_allclose(ours, roc_auc_score(labels, scores, average=None))
        assert macro_auroc(ours) == pytest.approx(roc_auc_score(labels, scores, average="macro"))

    def test_label_with_one_class_is_skipped_in_the_macro(self) -> None:
        labels, scores = multilabel_data(3)
        labels[:, 1] = 0  # no positives for label 1
        aurocs = per_label_auroc(labels, scores)
        assert aurocs[1] is None
        expected = np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in (0, 2)])
        assert macro_auroc(aurocs) == pytest.approx(expected)
        assert macro_auroc([None, None]) is None

    def test_intervals_are_the_binary_ones_per_column(self) -> None:
        labels, scores = multilabel_data(4)
        intervals = per_label_auroc_interval(labels, scores, n_resamples=200, seed=1)
        for j, interval in enumerate(intervals):
            assert interval == auroc_interval(labels[:, j], scores[:, j], n_resamples=200, seed=1)
            low, high = interval
            assert low <= roc_auc_score(labels[:, j], scores[:, j]) <= high

    @pytest.mark.parametrize(
        "labels, scores, pattern",
        [
            (np.zeros((4, 2)), np.zeros((4, 3)), r"labels \(4, 2\) and scores \(4, 3\) must both be \(cases, labels\)"),
            (np.zeros(4), np.zeros(4), r"labels \(4,\) and scores \(4,\)"),
            (np.full((4, 2), 2), np.zeros((4, 2)), "must be 0 or 1 in every column"),
        ],
        ids=["shape", "one-dimensional", "not-binary"],
    )
    def test_refuses_bad_input(self, labels: np.ndarray, scores: np.ndarray, pattern: str) -> None:
        with pytest.raises(ValueError, match=pattern):
            per_label_auroc(labels, scores)


class TestPooledLabelAurocs:
    def test_per_label_pooling_equals_binary_pooling(self) -> None:
        sites = [multilabel_data(seed, n=60) for seed in (5, 6)]
        released = []
        for index, (labels, scores) in enumerate(sites):
            patients = [f"{index}-{i}" for i in range(len(labels))]
            groups = per_label_score_groups(labels, scores, patients=patients, min_patients=1)
            released.append(list(zip(groups, per_label_auroc(labels, scores), strict=True)))
            for j, label_groups in enumerate(groups):
                assert label_groups == score_groups(labels[:, j], scores[:, j], patients=patients, min_patients=1)
        pooled = pooled_label_aurocs(released)
        all_labels = np.concatenate([labels for labels, _ in sites])
        all_scores = np.concatenate([scores for _, scores in sites])
        # min_patients=1 and scores on the bin grid: pooling loses nothing
        np.testing.assert_allclose(pooled, roc_auc_score(all_labels, all_scores, average=None), atol=1e-9)
        assert pooled[0] == pooled_auroc([site[0] for site in released])

    def test_refuses_sites_with_other_labels(self) -> None:
        with pytest.raises(ValueError, match="site 1 released score groups for 1 labels, site 0 for 2"):
            pooled_label_aurocs([[([], None), ([], None)], [([], None)]])
        assert pooled_label_aurocs([]) == []

    def test_refuses_patients_of_another_length(self) -> None:
        labels, scores = multilabel_data(7, n=10)
        with pytest.raises(ValueError, match="patients names 9 cases, labels 10"):
            per_label_score_groups(labels, scores, patients=list(range(9)), min_patients=1)


# ---------------------------------------------------------------- multi-class


class TestMulticlass:
    @pytest.mark.parametrize("seed, n_classes", [(0, 3), (1, 4), (2, 5)])
    def test_one_vs_rest_macro_matches_sklearn(self, seed: int, n_classes: int) -> None:
        labels, scores = multiclass_data(seed, n_classes=n_classes)
        aurocs = one_vs_rest_auroc(labels, scores)
        assert len(aurocs) == n_classes
        expected = roc_auc_score(labels, scores, multi_class="ovr", average="macro")
        assert macro_auroc(aurocs) == pytest.approx(expected)
        for k, auroc in enumerate(aurocs):
            assert auroc == pytest.approx(roc_auc_score(labels == k, scores[:, k]))

    def test_accuracy_matches_sklearn(self) -> None:
        labels, scores = multiclass_data(3)
        assert multiclass_accuracy(labels, scores) == pytest.approx(accuracy_score(labels, scores.argmax(axis=1)))
        assert multiclass_accuracy(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]])) == 0.5

    def test_absent_class_is_none(self) -> None:
        labels, scores = multiclass_data(4, n_classes=3)
        labels[labels == 2] = 0
        aurocs = one_vs_rest_auroc(labels, scores)
        assert aurocs[2] is None and None not in aurocs[:2]

    @pytest.mark.parametrize(
        "labels, scores, pattern",
        [
            (np.array([0, 1, 3]), np.zeros((3, 3)), "hold 0..3, outside 0..2 for 3 score columns"),
            (np.array([0, -1]), np.zeros((2, 2)), "hold -1..0, outside 0..1"),
            (np.array([0.0, 1.0]), np.zeros((2, 2)), "must be class indices"),
            (np.zeros((2, 2), int), np.zeros((2, 2)), r"must be \(cases,\) and scores \(cases, classes\)"),
            (np.zeros(3, int), np.zeros((2, 2)), r"not \(3,\) and \(2, 2\)"),
        ],
        ids=["too-high", "negative", "float", "one-hot", "length"],
    )
    def test_refuses_bad_input(self, labels: np.ndarray, scores: np.ndarray, pattern: str) -> None:
        with pytest.raises(ValueError, match=pattern):
            one_vs_rest_auroc(labels, scores)
