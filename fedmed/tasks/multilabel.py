"""Several findings per record, each present or absent (a chest X-ray holds several): one sigmoid per label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import InputConfig, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import TargetError
from fedmed.tasks.base import Metric
from fedmed.tasks.per_label import MACRO_AUROC, PerLabelTask, label_metric
from fedmed.tasks.registry import register_task


@register_task(TaskKind.MULTILABEL)
class MultiLabelTask(PerLabelTask):
    """One 0/1 column per named label in the manifest (``file,split,<label>,...``)."""

    kind = TaskKind.MULTILABEL
    columns = ()
    activation = staticmethod(torch.sigmoid)

    def manifest_columns(self) -> tuple[str, ...]:
        return self.names

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        values = []
        for name in self.names:
            cell = row.values.get(name, "")
            if cell not in ("0", "1"):
                what = "missing label" if cell == "" else "label not 0 or 1"
                raise TargetError(
                    what, f"line {row.line} has {repr(cell) if cell else 'nothing'} in column '{name}'; give 0 or 1",
                )
            values.append(float(cell))
        return np.asarray(values, dtype=np.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)

    def cell_metrics(self) -> list[Metric]:
        return [MACRO_AUROC, *(label_metric(name) for name in self.names)]

    def finding_metrics(self) -> list[Metric]:
        return self.cell_metrics()

    def site_extras(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
        clamped = torch.as_tensor(predictions, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        loss = nn.functional.binary_cross_entropy(clamped, torch.as_tensor(targets, dtype=torch.float64))
        return {"eval_loss": float(loss)}
