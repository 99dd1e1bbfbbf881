"""How well a model does at each site and for whom: metrics, subgroups and findings."""

from fedmed.evaluation.findings import describe_group, find_findings
from fedmed.evaluation.metrics import (
    SCORE_BINS,
    accuracy,
    auroc_interval,
    equalized_odds_difference,
    expected_calibration_error,
    pooled_auroc,
    predict_scores,
    roc_auc,
    roc_auc_from_histograms,
    score_groups,
    score_histograms,
    sensitivity_specificity,
)
from fedmed.evaluation.subgroups import ATTRIBUTES, evaluate_subgroups

__all__ = [
    "ATTRIBUTES",
    "SCORE_BINS",
    "accuracy",
    "auroc_interval",
    "describe_group",
    "equalized_odds_difference",
    "evaluate_subgroups",
    "expected_calibration_error",
    "find_findings",
    "predict_scores",
    "roc_auc",
    "pooled_auroc",
    "roc_auc_from_histograms",
    "score_groups",
    "score_histograms",
    "sensitivity_specificity",
]
