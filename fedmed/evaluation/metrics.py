"""Classification metrics as pure functions of labels and scores."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_roc_auc
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


def score_histograms(labels: np.ndarray, scores: np.ndarray, *, bins: int = SCORE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and of negative cases per score bin over [0, 1].

    A site releases these aggregates instead of one score per patient; summed over sites
    they give the pooled AUROC to within the bin width.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    labels = np.asarray(labels) >= 0.5
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    positives, _ = np.histogram(scores[labels], bins=edges)
    negatives, _ = np.histogram(scores[~labels], bins=edges)
    return positives, negatives


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
def predict_scores(model: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Probability of the positive class for each image."""
    model.to(device).eval()
    chunks = [torch.sigmoid(model(batch.to(device)).squeeze(1)).cpu() for batch in images.split(batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)
