"""What multi-label and multi-class tasks share: one AUROC per named output, pooled one by one.

``PerLabelTask`` holds that shared half; a subclass says how its targets become one 0/1
column per output (``indicators``), how logits become probabilities (``activation``), and
what else its site and cell metrics carry.

A multi-class task is scored one class against the rest, so both release, per output,
the coarsened score groups the binary task releases (fedmed.evaluation.score_groups),
each prefixed by the output's index.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import EvaluationConfig
from fedmed.evaluation.multilabel import (
    macro_auroc,
    per_label_auroc,
    per_label_auroc_interval,
    per_label_score_groups,
    pooled_label_aurocs,
)
from fedmed.tasks.base import Metric, SiteEvaluation, Task, suppressed_cell
from fedmed.tasks.binary import read_groups

MACRO_AUROC = Metric("macro_auroc", "macro AUROC", scale=(0.5, 1.0))


def label_metric(name: str) -> Metric:
    return Metric(f"auroc_{name}", f"AUROC ({name})", scale=(0.5, 1.0))


def per_label_release(
    targets: np.ndarray, scores: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
) -> list[float]:
    """(output index, first bin, last bin, positives, negatives) per score group, output by output."""
    release: list[float] = []
    groups = per_label_score_groups(targets, scores, patients=patients, min_patients=min_cell_size)
    for k, label_groups in enumerate(groups):
        for group in label_groups:
            release.extend([float(k), *(float(v) for v in group)])
    return release


def pooled_per_label(
    sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]], names: Sequence[str],
) -> list[float | None]:
    """Each output's pooled AUROC from the sites' releases and their own per-output AUROCs.

    Raises:
        ValueError: a release that is not whole quintuples with known output indices.
    """
    released = []
    for release, metrics in sites:
        values = [float(v) for v in release]
        if len(values) % 5:
            raise ValueError("per-output score groups must be (output, first, last, positives, negatives) quintuples")
        by_output: dict[int, list[float]] = {k: [] for k in range(len(names))}
        for start in range(0, len(values), 5):
            index = values[start]
            if index != int(index) or int(index) not in by_output:
                raise ValueError(f"score group names output {index:g}; the task has {len(names)}")
            by_output[int(index)].extend(values[start + 1:start + 5])
        released.append([
            (read_groups(by_output[k]), metrics.get(f"auroc_{name}")) for k, name in enumerate(names)
        ])
    return pooled_label_aurocs(released)


def macro_interval(
    targets: np.ndarray, scores: np.ndarray, *, confidence: float, n_resamples: int, seed: int,
) -> tuple[float, float] | None:
    """Percentile bootstrap of the macro AUROC, resampling cases (labels stay together)."""
    n = len(targets)
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, n, n)
        value = macro_auroc(per_label_auroc(targets[index], scores[index]))
        if value is not None:
            values.append(value)
    if len(values) < max(10, n_resamples // 2):
        return None
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def per_label_cell(
    targets: np.ndarray, scores: np.ndarray, names: Sequence[str], *, patients: int, settings: EvaluationConfig,
    min_cell_size: int, seed: int, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Macro AUROC with a case-bootstrap interval, then each output's prevalence, AUROC and interval."""
    if suppressed_cell(patients, len(targets), min_cell_size):
        return {"suppressed": True}
    aurocs = per_label_auroc(targets, scores)
    interval = macro_interval(
        targets, scores, confidence=settings.confidence, n_resamples=settings.bootstrap_samples, seed=seed,
    )
    cell: dict[str, Any] = {
        "n": int(len(targets)),
        "macro_auroc": macro_auroc(aurocs),
        "macro_auroc_ci": list(interval) if interval is not None else None,
        **dict(extra or {}),
    }
    intervals = per_label_auroc_interval(
        targets, scores, confidence=settings.confidence, n_resamples=settings.bootstrap_samples, seed=seed,
    )
    for k, (name, label_interval) in enumerate(zip(names, intervals, strict=True)):
        cell[f"prevalence_{name}"] = float(np.mean(targets[:, k] >= 0.5))
        cell[f"auroc_{name}"] = aurocs[k]
        cell[f"auroc_{name}_ci"] = list(label_interval) if label_interval is not None else None
    return cell


class PerLabelTask(Task):
    """A classifier scored by one AUROC per named output and their macro average."""

    model_kind = "classifier"
    activation: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    @property
    def outputs(self) -> int:
        return len(self.names)

    def indicators(self, targets: np.ndarray) -> np.ndarray:
        """(N, outputs) 0/1: which output each record is positive for."""
        return np.asarray(targets, dtype=np.float64)

    def site_extras(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
        """The subclass's further site metrics (its test loss first)."""
        return {}

    def cell_extras(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        model.to(device).eval()
        chunks = [type(self).activation(model(batch.to(device))).cpu() for batch in images.split(256)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.outputs), dtype=np.float32)

    @property
    def metric(self) -> Metric:
        return MACRO_AUROC

    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        indicators = self.indicators(targets)
        aurocs = per_label_auroc(indicators, predictions)
        metrics = {**self.site_extras(targets, predictions), "macro_auroc": macro_auroc(aurocs)}
        metrics |= {f"auroc_{name}": value for name, value in zip(self.names, aurocs, strict=True)}
        return SiteEvaluation(
            metrics=metrics,
            release=per_label_release(indicators, predictions, patients=patients, min_cell_size=min_cell_size),
        )

    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        return macro_auroc(pooled_per_label(sites, self.names))

    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        return per_label_cell(
            self.indicators(targets), predictions, self.names, patients=patients, settings=settings,
            min_cell_size=min_cell_size, seed=seed, extra=self.cell_extras(targets, predictions),
        )
