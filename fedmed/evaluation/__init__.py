"""How well a model does at each site: metrics as pure functions."""

from fedmed.evaluation.metrics import (
    SCORE_BINS,
    accuracy,
    predict_scores,
    roc_auc,
    roc_auc_from_histograms,
    score_histograms,
)

__all__ = [
    "SCORE_BINS",
    "accuracy",
    "predict_scores",
    "roc_auc",
    "roc_auc_from_histograms",
    "score_histograms",
]
