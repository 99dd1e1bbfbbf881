"""What a task is: everything about one kind of question that the rest of fedmed must not assume.

A task owns how targets are read from a site's manifest, the network's output head, the
training loss, predictions, a site's metrics, the aggregates a site may release so the
server can compute a pooled metric without per-patient data, the metric of a subgroup
cell, and which numbers the report shows. The federation, the evaluation and the report
take metric names and values from the task; adding a task is one module and a registry
entry (fedmed.tasks.registry).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import EvaluationConfig, InputConfig, TaskConfig, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import TargetError


@dataclass(frozen=True)
class Metric:
    """A number a cell, a site or the pooled test set reports, and how people read it."""

    key: str
    """Its name in results.json (a cell's interval, when it has one, is ``<key>_ci``)."""
    label: str
    """How the report and the CLI name it, e.g. "AUROC" or "Dice (lesion)"."""
    scale: tuple[float, float] = (0.0, 1.0)
    """Heatmap colour range: pale at the low end, dark at the high end."""
    higher_is_better: bool = True

    def as_record(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "scale": list(self.scale),
                "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class SiteEvaluation:
    """A site's answer about one model on its test set: what it may send, and nothing more."""

    metrics: dict[str, float | None]
    """Scalar metrics, the task's headline metric among them (None where undefined)."""
    release: list[float]
    """The aggregates the server pools across sites (fedmed.tasks: each task's own layout)."""


class Task(ABC):
    """One kind of question a federation answers; subclasses register with ``register_task``."""

    kind: ClassVar[TaskKind]
    model_kind: ClassVar[str]
    """The registry's kind of network it needs: ``classifier`` or ``segmenter``."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @property
    def names(self) -> tuple[str, ...]:
        """The task's named outputs: labels, classes or structures (none for binary)."""
        return self.config.names

    # --- data -------------------------------------------------------------------------------

    columns: ClassVar[tuple[str, ...]]
    """Manifest columns the targets need beyond ``file`` and ``split`` (instance-specific for some tasks)."""

    def manifest_columns(self) -> tuple[str, ...]:
        return self.columns

    def manifest_problem(self, row: Mapping[str, str]) -> str | None:
        """A problem with a row's target cells that makes the whole manifest wrong, or None.

        Most target problems skip only their row (``read_target`` raises); binary labels
        keep their manifest-wide check because a 0/1 column is the site's statement.
        """
        return None

    @abstractmethod
    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        """The target of one record, as an array; raises TargetError to skip the row."""

    def target_files(self, row: ManifestRow) -> tuple[str, ...]:
        """Files (relative to the site folder) the target is read from, beyond the image: cached by content."""
        return ()

    def target_text(self, target: np.ndarray) -> str:
        """A short, exact text of a target for the privacy fingerprint (the budget's key)."""
        return ",".join(str(int(v)) for v in np.asarray(target).reshape(-1))

    target_dtype: ClassVar[torch.dtype] = torch.float32

    # --- model and training --------------------------------------------------------------------

    @property
    @abstractmethod
    def outputs(self) -> int:
        """Logits per record (classifier) or channels per voxel (segmenter)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss, a mean over the batch (Opacus' ``loss_reduction="mean"``)."""

    # --- evaluation ----------------------------------------------------------------------------

    @abstractmethod
    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        """What the model says about each record (scores, probabilities or label maps)."""

    @property
    @abstractmethod
    def metric(self) -> Metric:
        """The headline metric: cross-site matrix, comparison, pooled number, site findings."""

    @abstractmethod
    def cell_metrics(self) -> list[Metric]:
        """The metrics of a subgroup cell, in the report's column order (headline first)."""

    def finding_metrics(self) -> list[Metric]:
        """Metrics whose subgroup gaps become findings (headline, then per label or structure)."""
        return [self.metric]

    @abstractmethod
    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        """A site's metrics of a model on its whole test set, and what it releases for pooling."""

    @abstractmethod
    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        """The headline metric over every site's test set pooled, from each site's (release, metrics).

        Raises:
            ValueError: a release that does not have this task's layout (a site running other code).
        """

    @abstractmethod
    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        """Metrics of one cell (a site's test set or a subgroup), or ``{"suppressed": True}`` when too small."""

    def describe(self) -> dict[str, Any]:
        """The task as results.json records it: what the report needs to name its numbers."""
        return {
            "kind": str(self.kind),
            "names": list(self.names),
            "metric": self.metric.as_record(),
            "cell_metrics": [m.as_record() for m in self.cell_metrics()],
        }


def suppressed_cell(patients: int, n: int, min_cell_size: int) -> bool:
    """True when a cell must be released as ``{"suppressed": True}`` only."""
    return patients < min_cell_size or n == 0


__all__ = ["Metric", "SiteEvaluation", "Task", "TargetError", "suppressed_cell"]
