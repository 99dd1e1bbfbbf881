"""One of several named classes per record (a grade, a type): softmax, cross-entropy, one-vs-rest AUROC."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import InputConfig, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import TargetError
from fedmed.evaluation.multilabel import multiclass_accuracy
from fedmed.tasks.base import Metric
from fedmed.tasks.per_label import MACRO_AUROC, PerLabelTask, label_metric
from fedmed.tasks.registry import register_task

ACCURACY = Metric("accuracy", "accuracy")


@register_task(TaskKind.MULTICLASS)
class MultiClassTask(PerLabelTask):
    """The manifest's ``label`` column names the class (or gives its 0-based index in ``classes``)."""

    kind = TaskKind.MULTICLASS
    columns = ("label",)
    target_dtype = torch.int64
    activation = staticmethod(partial(torch.softmax, dim=1))

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
            f"give one of {', '.join(self.names)} or its index 0-{len(self.names) - 1}",
        )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets)

    def indicators(self, targets: np.ndarray) -> np.ndarray:
        """One-vs-rest: a 1 in the column of each record's class."""
        return np.eye(len(self.names), dtype=np.float64)[np.asarray(targets, dtype=np.int64)]

    def cell_metrics(self) -> list[Metric]:
        return [MACRO_AUROC, ACCURACY, *(label_metric(name) for name in self.names)]

    def site_extras(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
        chosen = np.clip(predictions[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)], 1e-7, 1.0)
        return {
            "eval_loss": float(-np.mean(np.log(chosen))) if len(targets) else 0.0,
            "accuracy": multiclass_accuracy(targets, predictions),
        }

    def cell_extras(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
        return {"accuracy": multiclass_accuracy(targets, predictions)}
