"""One 0/1 label per record: a finding present or absent. Sigmoid, BCE, AUROC."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import EvaluationConfig, InputConfig, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import BinaryLabels
from fedmed.evaluation.metrics import (
    SCORE_BINS,
    ScoreGroup,
    accuracy,
    auroc_interval,
    expected_calibration_error,
    pooled_auroc,
    predict_scores,
    roc_auc,
    score_groups,
    sensitivity_specificity,
)
from fedmed.tasks.base import Metric, SiteEvaluation, Task, suppressed_cell
from fedmed.tasks.registry import register_task

AUROC = Metric("auroc", "AUROC", scale=(0.5, 1.0))


def binary_cross_entropy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean BCE of probabilities (clamped away from 0 and 1) against 0/1 labels."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64)).clamp(1e-7, 1 - 1e-7)
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    return float(torch.nn.functional.binary_cross_entropy(scores, labels)) if labels.numel() else 0.0


def binary_cell(
    labels: np.ndarray, scores: np.ndarray, *, patients: int, settings: EvaluationConfig, min_cell_size: int, seed: int,
) -> dict[str, Any]:
    """AUROC with its bootstrap interval, prevalence, sensitivity and specificity at the threshold, ECE."""
    if suppressed_cell(patients, len(labels), min_cell_size):
        return {"suppressed": True}
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    interval = auroc_interval(
        labels, scores, confidence=settings.confidence, n_resamples=settings.bootstrap_samples, seed=seed,
    )
    sensitivity, specificity = sensitivity_specificity(labels, scores, threshold=settings.threshold)
    return {
        "n": int(labels.size),
        "prevalence": float(np.mean(labels >= 0.5)),
        "auroc": roc_auc(labels, scores),
        "auroc_ci": list(interval) if interval is not None else None,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ece": expected_calibration_error(labels, scores),
    }


def flatten_groups(groups: Sequence[ScoreGroup]) -> list[float]:
    return [float(value) for group in groups for value in group]


def read_groups(release: Sequence[float], *, bins: int = SCORE_BINS) -> list[ScoreGroup]:
    """Score groups from a site's flat release, checked: (first bin, last bin, positives, negatives) each.

    Raises:
        ValueError: not whole groups, not whole non-negative counts, or bins out of range.
    """
    values = [float(v) for v in release]
    if len(values) % 4 or any(v < 0 or v != int(v) for v in values):
        raise ValueError("score groups must be whole (first bin, last bin, positives, negatives) quadruples")
    groups = [tuple(int(v) for v in values[k:k + 4]) for k in range(0, len(values), 4)]
    if any(not 0 <= first <= last < bins for first, last, _, _ in groups):
        raise ValueError(f"score group bins must lie in 0..{bins - 1}")
    return groups  # type: ignore[return-value]


@register_task(TaskKind.BINARY)
class BinaryTask(Task):
    """A finding present (1) or absent (0) per image or series: the manifest's ``label`` column."""

    kind = TaskKind.BINARY
    model_kind = "classifier"
    columns = ("label",)

    @property
    def outputs(self) -> int:
        return 1

    _labels = BinaryLabels()

    def manifest_problem(self, row: Mapping[str, str]) -> str | None:
        return self._labels.manifest_problem(row)

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        return self._labels.read_target(row, site_dir=site_dir, sources=sources, spec=spec)

    def target_text(self, target: np.ndarray) -> str:
        return self._labels.target_text(target)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), targets)

    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        return predict_scores(model, images, device=device)

    @property
    def metric(self) -> Metric:
        return AUROC

    def cell_metrics(self) -> list[Metric]:
        return [AUROC, Metric("sensitivity", "sensitivity"), Metric("specificity", "specificity"),
                Metric("ece", "ECE", higher_is_better=False)]

    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        groups = score_groups(targets, predictions, patients=patients, min_patients=min_cell_size)
        return SiteEvaluation(
            metrics={
                "eval_loss": binary_cross_entropy(predictions, targets),
                "auroc": roc_auc(targets, predictions),
                "accuracy": accuracy(targets, predictions),
            },
            release=flatten_groups(groups),
        )

    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        return pooled_auroc([(read_groups(release), metrics.get("auroc")) for release, metrics in sites])

    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        return binary_cell(targets, predictions, patients=patients, settings=settings, min_cell_size=min_cell_size,
                           seed=seed)
