"""One of several named classes per record (a grade, a type): softmax, cross-entropy, one-vs-rest AUROC."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import EvaluationConfig, InputConfig, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import TargetError
from fedmed.evaluation.multilabel import macro_auroc, per_label_auroc
from fedmed.tasks.base import Metric, SiteEvaluation, Task
from fedmed.tasks.per_label import (
    MACRO_AUROC,
    label_metric,
    per_label_cell,
    per_label_release,
    pooled_per_label,
)
from fedmed.tasks.registry import register_task

ACCURACY = Metric("accuracy", "accuracy")


@register_task(TaskKind.MULTICLASS)
class MultiClassTask(Task):
    """The manifest's ``label`` column names the class (or gives its 0-based index in ``classes``)."""

    kind = TaskKind.MULTICLASS
    model_kind = "classifier"
    columns = ("label",)
    target_dtype = torch.int64

    @property
    def outputs(self) -> int:
        return len(self.names)

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        cell = row.values.get("label", "")
        if cell in self.names:
            return np.asarray(self.names.index(cell), dtype=np.int64)
        if cell.isdigit() and int(cell) < len(self.names):
            return np.asarray(int(cell), dtype=np.int64)
        raise TargetError(
            "missing label" if cell == "" else "unknown class",
            f"line {row.line} has {repr(cell) if cell else 'nothing'} in column 'label'; "
            f"give one of {', '.join(self.names)} "
            f"or its index 0-{len(self.names) - 1}",
        )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        model.to(device).eval()
        chunks = [torch.softmax(model(batch.to(device)), dim=1).cpu() for batch in images.split(256)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.outputs), dtype=np.float32)

    def _one_hot(self, targets: np.ndarray) -> np.ndarray:
        return np.eye(len(self.names), dtype=np.float64)[np.asarray(targets, dtype=np.int64)]

    @property
    def metric(self) -> Metric:
        return MACRO_AUROC

    def cell_metrics(self) -> list[Metric]:
        return [MACRO_AUROC, ACCURACY, *(label_metric(name) for name in self.names)]

    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        one_hot = self._one_hot(targets)
        aurocs = per_label_auroc(one_hot, predictions)
        chosen = np.clip(predictions[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)], 1e-7, 1.0)
        metrics: dict[str, float | None] = {
            "eval_loss": float(-np.mean(np.log(chosen))) if len(targets) else 0.0,
            "macro_auroc": macro_auroc(aurocs),
            "accuracy": float(np.mean(predictions.argmax(axis=1) == targets)) if len(targets) else 0.0,
        }
        metrics |= {f"auroc_{name}": value for name, value in zip(self.names, aurocs, strict=True)}
        return SiteEvaluation(
            metrics=metrics,
            release=per_label_release(one_hot, predictions, patients=patients, min_cell_size=min_cell_size),
        )

    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        return macro_auroc(pooled_per_label(sites, self.names))

    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        accuracy = float(np.mean(predictions.argmax(axis=1) == targets)) if len(targets) else None
        return per_label_cell(
            self._one_hot(targets), predictions, self.names, patients=patients, settings=settings,
            min_cell_size=min_cell_size, seed=seed, extra={"accuracy": accuracy},
        )
