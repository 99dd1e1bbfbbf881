"""Classification metrics as pure functions of labels and scores."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from scipy.stats import bootstrap, rankdata
from torch import nn

SCORE_BINS = 100
"""Resolution of the score histograms that sites share instead of per-patient scores."""


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels)))


def accuracy(labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5) -> float:
    """Fraction of cases whose thresholded score equals the label."""
    labels = np.asarray(labels)
    return float(np.mean((np.asarray(scores) >= threshold) == (labels >= 0.5))) if labels.size else 0.0


def auroc_interval(
    labels: np.ndarray, scores: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """Stratified percentile bootstrap interval for the AUROC; None when a class is absent.

    Positives and negatives are resampled separately (scipy's unpaired two-sample bootstrap),
    so every resample keeps the cell's prevalence and has an AUROC. A class of one case
    cannot vary under resampling: the interval then reflects the other class only, and with
    one case of each there is no variability to resample and the result is None.
    """
    labels = np.asarray(labels) >= 0.5
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0 or positives.size + negatives.size < 3:
        return None
    options = dict(
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    if positives.size == 1:
        result = bootstrap((negatives,), lambda neg, axis: _mann_whitney_auroc(positives, neg), **options)
    elif negatives.size == 1:
        result = bootstrap((positives,), lambda pos, axis: _mann_whitney_auroc(pos, negatives), **options)
    else:
        result = bootstrap((positives, negatives), lambda pos, neg, axis: _mann_whitney_auroc(pos, neg), **options)
    low, high = result.confidence_interval
    return float(low), float(high)


def _mann_whitney_auroc(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """P(positive scores higher) + P(tie) / 2 along the last axis, from mid-ranks.

    Either argument may be a batch of resamples (..., n) or a 1-D sample to broadcast.
    """
    shape = np.broadcast_shapes(positives.shape[:-1], negatives.shape[:-1])
    positives = np.broadcast_to(positives, (*shape, positives.shape[-1]))
    negatives = np.broadcast_to(negatives, (*shape, negatives.shape[-1]))
    n_pos, n_neg = positives.shape[-1], negatives.shape[-1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=-1), axis=-1)
    u = ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def sensitivity_specificity(
    labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5
) -> tuple[float | None, float | None]:
    """True positive and true negative rates at `threshold`; None for a class that is absent."""
    labels = np.asarray(labels) >= 0.5
    predicted = np.asarray(scores) >= threshold
    sensitivity = float(np.mean(predicted[labels])) if labels.any() else None
    specificity = float(np.mean(~predicted[~labels])) if (~labels).any() else None
    return sensitivity, specificity


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, *, bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size.

    Naeini et al., AAAI 2015 (ECE). A score of 1.0 falls in the last bin.
    """
    labels = (np.asarray(labels) >= 0.5).astype(np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if labels.size == 0:
        return 0.0
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    label_sums = np.bincount(index, weights=labels, minlength=bins)
    score_sums = np.bincount(index, weights=scores, minlength=bins)
    return float(np.sum(np.abs(label_sums - score_sums)) / labels.size)


def equalized_odds_difference(rates: Iterable[tuple[float | None, float | None]]) -> float | None:
    """Largest gap across groups in true positive rate or in false positive rate.

    `rates` holds (sensitivity, specificity) per group; a group missing either is skipped.
    The definition is fairlearn's `equalized_odds_difference` (Hardt et al., NeurIPS 2016).
    Returns None with fewer than two groups.
    """
    complete = [(sens, 1.0 - spec) for sens, spec in rates if sens is not None and spec is not None]
    if len(complete) < 2:
        return None
    tpr, fpr = np.array(complete).T
    return float(max(tpr.max() - tpr.min(), fpr.max() - fpr.min()))


def score_histograms(
    labels: np.ndarray, scores: np.ndarray, *, bins: int = SCORE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and of negative cases per score bin over [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    labels = np.asarray(labels) >= 0.5
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    positives, _ = np.histogram(scores[labels], bins=edges)
    negatives, _ = np.histogram(scores[~labels], bins=edges)
    return positives, negatives


ScoreGroup = tuple[int, int, int, int]
"""(first bin, last bin, positives, negatives): adjacent score bins released together."""


def score_groups(
    labels: np.ndarray, scores: np.ndarray, *, patients: Sequence[Hashable], min_patients: int, bins: int = SCORE_BINS,
) -> list[ScoreGroup]:
    """The site's score histogram as groups of adjacent bins, each over at least ``min_patients`` patients.

    What a site releases for the pooled AUROC instead of one score per patient. Bins are
    merged from the lowest score up until a group covers ``min_patients`` distinct patients
    (a last, smaller group joins the one before), so a model crafted to give one patient a
    bin of its own learns no more about that patient than a cell of ``min_patients`` tells.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    positive = np.asarray(labels) >= 0.5
    where = np.digitize(np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0), edges[1:-1])
    groups: list[list[int]] = []
    current: list[int] = []
    for b in range(bins):
        current.extend(np.flatnonzero(where == b).tolist())
        if current and len({patients[i] for i in current}) >= max(min_patients, 1):
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    released = []
    for members in groups:
        spanned = where[members]
        n_positive = int(positive[members].sum())
        released.append((int(spanned.min()), int(spanned.max()), n_positive, len(members) - n_positive))
    return released


def pooled_auroc(sites: Sequence[tuple[Sequence[ScoreGroup], float | None]]) -> float | None:
    """AUROC over every site's test set pooled, from what sites release: (score groups, own AUROC).

    The Mann-Whitney statistic splits into pairs within a site, which its exact AUROC gives,
    and pairs across sites, which the groups give: a positive beats a negative whose group
    lies wholly below its own, loses to one wholly above, and ties (one half) where the two
    groups' bin ranges overlap. Coarse groups pull the cross-site part towards one half.
    """
    counts = [(sum(g[2] for g in groups), sum(g[3] for g in groups)) for groups, _ in sites]
    n_positive, n_negative = sum(p for p, _ in counts), sum(n for _, n in counts)
    if n_positive == 0 or n_negative == 0:
        return None
    wins = 0.0
    for i, (groups_i, auroc_i) in enumerate(sites):
        p_i, n_i = counts[i]
        if p_i and n_i:
            wins += (auroc_i if auroc_i is not None else 0.5) * p_i * n_i
        positives = np.array([(g[0], g[1], g[2]) for g in groups_i if g[2]], dtype=np.float64).reshape(-1, 3)
        for j, (groups_j, _) in enumerate(sites):
            negatives = np.array([(g[0], g[1], g[3]) for g in groups_j if g[3]], dtype=np.float64).reshape(-1, 3)
            if i == j or not len(positives) or not len(negatives):
                continue
            above = positives[:, None, 0] > negatives[None, :, 1]
            below = positives[:, None, 1] < negatives[None, :, 0]
            share = np.where(above, 1.0, np.where(below, 0.0, 0.5))
            wins += float((positives[:, None, 2] * negatives[None, :, 2] * share).sum())
    return wins / (n_positive * n_negative)


def roc_auc_from_histograms(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUROC from binned scores: P(pos > neg) + P(same bin) / 2 (the Mann-Whitney form)."""
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    negatives_below = np.cumsum(negatives) - negatives
    wins = float(np.sum(positives * negatives_below) + 0.5 * np.sum(positives * negatives))
    return wins / (n_pos * n_neg)


@torch.no_grad()
def predict_scores(
    model: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Probability of the positive class for each image."""
    model.to(device).eval()
    chunks = [torch.sigmoid(model(batch.to(device)).squeeze(1)).cpu() for batch in images.split(batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)
