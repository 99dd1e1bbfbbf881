"""Several findings per record, each present or absent (a chest X-ray holds several): one sigmoid per label."""

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


@register_task(TaskKind.MULTILABEL)
class MultiLabelTask(Task):
    """One 0/1 column per named label in the manifest (``file,split,<label>,...``)."""

    kind = TaskKind.MULTILABEL
    model_kind = "classifier"
    columns = ()

    def manifest_columns(self) -> tuple[str, ...]:
        return self.names

    @property
    def outputs(self) -> int:
        return len(self.names)

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        values = []
        for name in self.names:
            cell = row.values.get(name, "")
            if cell not in ("0", "1"):
                what = "missing label" if cell == "" else "label not 0 or 1"
                raise TargetError(what, f"line {row.line} has {repr(cell) if cell else 'nothing'} "
                    f"in column '{name}'; give 0 or 1")
            values.append(float(cell))
        return np.asarray(values, dtype=np.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        model.to(device).eval()
        chunks = [torch.sigmoid(model(batch.to(device))).cpu() for batch in images.split(256)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.outputs), dtype=np.float32)

    @property
    def metric(self) -> Metric:
        return MACRO_AUROC

    def cell_metrics(self) -> list[Metric]:
        return [MACRO_AUROC, *(label_metric(name) for name in self.names)]

    def finding_metrics(self) -> list[Metric]:
        return self.cell_metrics()

    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        aurocs = per_label_auroc(targets, predictions)
        clamped = torch.as_tensor(predictions, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        loss = nn.functional.binary_cross_entropy(clamped, torch.as_tensor(targets, dtype=torch.float64))
        metrics: dict[str, float | None] = {"eval_loss": float(loss), "macro_auroc": macro_auroc(aurocs)}
        metrics |= {f"auroc_{name}": value for name, value in zip(self.names, aurocs, strict=True)}
        return SiteEvaluation(
            metrics=metrics,
            release=per_label_release(targets, predictions, patients=patients, min_cell_size=min_cell_size),
        )

    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        return macro_auroc(pooled_per_label(sites, self.names))

    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        return per_label_cell(targets, predictions, self.names, patients=patients, settings=settings,
                              min_cell_size=min_cell_size, seed=seed)
