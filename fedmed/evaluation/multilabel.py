"""Multi-label and multi-class classification metrics as pure functions of labels and scores.

Multi-label: each of L findings is its own binary task (a radiograph can show several), so
every metric is the binary one per label column, from fedmed.evaluation.metrics. Multi-class:
one label per case out of K, scored by softmax probabilities; AUROC is one-vs-rest per class
(Fawcett, Pattern Recognition Letters 2006), the macro average scikit-learn's
``roc_auc_score(multi_class="ovr", average="macro")`` computes.

Macro averages skip labels (classes) that lack positives or negatives, whose AUROC is
undefined; None when no label has both. Say how many were averaged when reporting one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from fedmed.evaluation.metrics import SCORE_BINS, ScoreGroup, auroc_interval, pooled_auroc, roc_auc, score_groups

LabelRelease = tuple[Sequence[ScoreGroup], float | None]
"""What a site releases for one label's pooled AUROC: its score groups and its own AUROC."""


def per_label_auroc(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """AUROC of every label column; None for a label with only one class present.

    Args:
        labels: (N, L) 0/1.
        scores: (N, L) probabilities (sigmoid of each label's logit).

    Raises:
        ValueError: shapes differ or are not (N, L), or a label is not 0/1.
    """
    labels, scores = _check_multilabel(labels, scores)
    return [roc_auc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]


def macro_auroc(aurocs: Sequence[float | None]) -> float | None:
    """Unweighted mean of the defined per-label (per-class) AUROCs; None when none is defined."""
    defined = [a for a in aurocs if a is not None]
    return float(np.mean(defined)) if defined else None


def per_label_auroc_interval(
    labels: np.ndarray, scores: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> list[tuple[float, float] | None]:
    """Stratified bootstrap interval of each label's AUROC (``auroc_interval`` per column)."""
    labels, scores = _check_multilabel(labels, scores)
    return [
        auroc_interval(labels[:, j], scores[:, j], confidence=confidence, n_resamples=n_resamples, seed=seed)
        for j in range(labels.shape[1])
    ]


def per_label_score_groups(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    patients: Sequence[Hashable],
    min_patients: int,
    bins: int = SCORE_BINS,
) -> list[list[ScoreGroup]]:
    """Each label's score groups (``score_groups`` per column): what a site releases to pool AUROCs.

    Every label gets its own groups, each over at least ``min_patients`` patients, so the
    protection of the binary release holds label by label.
    """
    labels, scores = _check_multilabel(labels, scores)
    if len(patients) != labels.shape[0]:
        raise ValueError(f"patients names {len(patients)} cases, labels {labels.shape[0]}; give one patient per row")
    return [
        score_groups(labels[:, j], scores[:, j], patients=patients, min_patients=min_patients, bins=bins)
        for j in range(labels.shape[1])
    ]


def pooled_label_aurocs(sites: Sequence[Sequence[LabelRelease]]) -> list[float | None]:
    """Per label, the AUROC over every site's cases pooled (``pooled_auroc`` label by label).

    Args:
        sites: per site, per label, (score groups, the site's own AUROC for that label).

    Raises:
        ValueError: sites release different numbers of labels.
    """
    if not sites:
        return []
    n_labels = len(sites[0])
    for index, released in enumerate(sites):
        if len(released) != n_labels:
            raise ValueError(
                f"site {index} released score groups for {len(released)} labels, site 0 for {n_labels}; "
                "every site must evaluate the same labels"
            )
    return [pooled_auroc([released[j] for released in sites]) for j in range(n_labels)]


def one_vs_rest_auroc(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """AUROC of each class against all others; None for a class absent (or alone) in ``labels``.

    Args:
        labels: (N,) integers 0..K-1.
        scores: (N, K) class probabilities (softmax).

    Raises:
        ValueError: shapes do not match or a label lies outside 0..K-1.
    """
    labels, scores = _check_multiclass(labels, scores)
    return [roc_auc((labels == k).astype(np.int64), scores[:, k]) for k in range(scores.shape[1])]


def multiclass_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of cases whose highest-scored class is their label (ties: the lowest class index)."""
    labels, scores = _check_multiclass(labels, scores)
    return float(np.mean(scores.argmax(axis=1) == labels)) if labels.size else 0.0


def _check_multilabel(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"multi-label labels {labels.shape} and scores {scores.shape} must both be (cases, labels)")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("multi-label labels must be 0 or 1 in every column")
    return labels.astype(np.int64), scores


def _check_multiclass(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"multi-class labels must be (cases,) and scores (cases, classes), not {labels.shape} and {scores.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"multi-class labels must be class indices (integers), not {labels.dtype}")
    n_classes = scores.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"multi-class labels hold {int(labels.min())}..{int(labels.max())}, outside 0..{n_classes - 1} "
            f"for {n_classes} score columns"
        )
    return labels, scores
