"""The binary task's cells and subgroup analysis, called as the tests of fedmed.evaluation call them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedmed.config import EvaluationConfig
from fedmed.data.dicom import DicomMetadata
from fedmed.evaluation import ATTRIBUTES
from fedmed.evaluation import evaluate_subgroups as evaluate_task_subgroups
from fedmed.tasks.binary import binary_cell


def evaluate_cell(
    labels: np.ndarray, scores: np.ndarray, *, patients: int, threshold: float, min_cell_size: int,
    confidence: float, n_resamples: int, seed: int = 0,
) -> dict[str, Any]:
    settings = EvaluationConfig(threshold=threshold, confidence=confidence, bootstrap_samples=n_resamples)
    return binary_cell(labels, scores, patients=patients, settings=settings, min_cell_size=min_cell_size, seed=seed)


def evaluate_subgroups(
    labels: np.ndarray, scores: np.ndarray, metadata: Sequence[DicomMetadata], *, threshold: float,
    min_cell_size: int, confidence: float, n_resamples: int, seed: int = 0, attributes: Sequence[str] = ATTRIBUTES,
) -> dict[str, Any]:
    """fedmed.evaluation.evaluate_subgroups with the binary task's cells."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not len(labels) == len(scores) == len(metadata):
        raise ValueError(
            f"labels, scores and metadata must be aligned, got {len(labels)}, {len(scores)} and {len(metadata)} items"
        )

    def cell(index: np.ndarray, patients: int) -> dict[str, Any]:
        return evaluate_cell(
            labels[index], scores[index], patients=patients, threshold=threshold, min_cell_size=min_cell_size,
            confidence=confidence, n_resamples=n_resamples, seed=seed,
        )

    return evaluate_task_subgroups(metadata, cell, metric="auroc", min_cell_size=min_cell_size, attributes=attributes)
