"""Named structures outlined voxel by voxel (organs, tumours, lesions), in 2-D images or 3-D volumes.

Masks come from DICOM SEG or NIfTI files named in the manifest's ``mask`` column and are
read on the model's grid (fedmed.data.masks). The network outputs background plus one
channel per structure; training minimises Dice + cross-entropy (MONAI ``DiceCELoss``).
A site reports the mean per-case Dice per structure and the 95th percentile Hausdorff
distance, and releases per structure only (cases, sum of Dice), from which the server's
pooled Dice is exact: the mean per-case Dice over every site's cases, no mask leaving a site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmed.config.schema import EvaluationConfig, InputConfig, SampleUnit, TaskKind
from fedmed.data.dataset import ManifestRow
from fedmed.data.masks import read_mask_image, read_mask_volume
from fedmed.data.series import group_series
from fedmed.data.targets import TargetError
from fedmed.evaluation.segmentation import dice_per_case, hd95_per_case, mean_interval, pooled_dice
from fedmed.tasks.base import Metric, SiteEvaluation, Task, suppressed_cell
from fedmed.tasks.registry import register_task

DICE = Metric("dice", "Dice")


def _nanmean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


@register_task(TaskKind.SEGMENTATION)
class SegmentationTask(Task):
    """Background (0) plus one label value per structure, in the order the config names them."""

    kind = TaskKind.SEGMENTATION
    model_kind = "segmenter"
    columns = ("mask",)
    target_dtype = torch.int64

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        from monai.losses import DiceCELoss

        self._loss = DiceCELoss(to_onehot_y=True, softmax=True)

    @property
    def outputs(self) -> int:
        return 1 + len(self.names)

    # --- data ------------------------------------------------------------------------------

    def _mask_path(self, row: ManifestRow, site_dir: Path) -> Path:
        name = row.values.get("mask", "").replace("\\", "/")
        relative = PurePosixPath(name)
        if not name:
            raise TargetError("no mask", f"line {row.line} names no file in column 'mask'; give the DICOM SEG or NIfTI")
        if relative.is_absolute() or ".." in relative.parts:
            raise TargetError("mask outside the site folder", f"line {row.line}: '{name}' must be a path inside it")
        path = site_dir / relative
        if not path.is_file():
            raise TargetError("mask not found", f"line {row.line}: no file '{name}' under {site_dir}")
        return path

    def target_files(self, row: ManifestRow) -> tuple[str, ...]:
        return (row.values.get("mask", ""),)

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        path = self._mask_path(row, site_dir)
        if spec.sample is SampleUnit.IMAGE:
            mask = read_mask_image(path, sources[0], structures=self.names, size=spec.image_size)
        else:
            grouping = group_series(list(sources))
            if len(grouping.series) != 1:
                raise TargetError("series changed since it was grouped", f"{row.file}: read the site again")
            mask = read_mask_volume(
                path, grouping.series[0], structures=self.names, target_shape=tuple(spec.volume.shape),
                target_spacing=spec.volume.spacing,
            )
        return np.asarray(mask, dtype=np.int64)

    def target_text(self, target: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(target, dtype=np.uint8).tobytes()).hexdigest()

    # --- training -----------------------------------------------------------------------------

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not len(targets):  # an empty Poisson batch: no data, a zero loss with the graph intact
            return logits.sum() * 0.0
        return self._loss(logits, targets.unsqueeze(1))

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, *, device: torch.device) -> np.ndarray:
        model.to(device).eval()
        chunks = [model(batch.to(device)).argmax(dim=1).to(torch.uint8).cpu() for batch in images.split(32)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, *images.shape[2:]), dtype=np.uint8)

    # --- evaluation -----------------------------------------------------------------------------

    @property
    def metric(self) -> Metric:
        return DICE

    def _per_structure(self) -> list[Metric]:
        metrics = []
        for name in self.names:
            if len(self.names) > 1:
                metrics.append(Metric(f"dice_{name}", f"Dice ({name})"))
            metrics.append(Metric(f"hd95_{name}", f"HD95 ({name}), voxels", scale=(0.0, 20.0), higher_is_better=False))
        return metrics

    def cell_metrics(self) -> list[Metric]:
        return [DICE, *self._per_structure()]

    def finding_metrics(self) -> list[Metric]:
        return [DICE, *(m for m in self._per_structure() if m.key.startswith("dice_"))]

    def _scores(self, targets: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.names)
        return (dice_per_case(predictions, targets, n_structures=n),
                hd95_per_case(predictions, targets, n_structures=n))

    def evaluate_site(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: Sequence[Hashable], min_cell_size: int,
    ) -> SiteEvaluation:
        dice, hd95 = self._scores(targets, predictions)
        metrics: dict[str, float | None] = {}
        release: list[float] = []
        for k, name in enumerate(self.names):
            known = dice[:, k][np.isfinite(dice[:, k])]
            metrics[f"dice_{name}"] = float(known.mean()) if known.size else None
            metrics[f"hd95_{name}"] = _nanmean(hd95[:, k])
            release.extend([float(known.size), float(known.sum())])
        metrics["dice"] = _nanmean(np.array([v for k, v in metrics.items() if k.startswith("dice_") and v is not None]))
        return SiteEvaluation(metrics=metrics, release=release)

    def pooled(self, sites: Sequence[tuple[Sequence[float], Mapping[str, float | None]]]) -> float | None:
        sums = []
        for release, _ in sites:
            values = [float(v) for v in release]
            if len(values) != 2 * len(self.names) or any(not np.isfinite(v) or v < 0 for v in values):
                raise ValueError(
                    f"a Dice release holds (cases, sum of Dice) for each of {len(self.names)} structure(s)"
                )
            pairs = [(int(values[2 * k]), values[2 * k + 1]) for k in range(len(self.names))]
            if any(total > cases + 1e-6 for cases, total in pairs):
                raise ValueError("a sum of Dice cannot exceed its number of cases")
            sums.append(pairs)
        per_structure = pooled_dice(sums)
        known = [v for v in per_structure if v is not None]
        return float(np.mean(known)) if known else None

    def evaluate_cell(
        self, targets: np.ndarray, predictions: np.ndarray, *, patients: int, settings: EvaluationConfig,
        min_cell_size: int, seed: int,
    ) -> dict[str, Any]:
        if suppressed_cell(patients, len(targets), min_cell_size):
            return {"suppressed": True}
        dice, hd95 = self._scores(targets, predictions)
        with np.errstate(invalid="ignore"):
            per_case = np.array([_nanmean(row) if np.isfinite(row).any() else np.nan for row in dice], dtype=np.float64)
        options = {"confidence": settings.confidence, "n_resamples": settings.bootstrap_samples, "seed": seed}
        interval = mean_interval(per_case, **options)
        cell: dict[str, Any] = {
            "n": int(len(targets)),
            "dice": _nanmean(per_case),
            "dice_ci": list(interval) if interval is not None else None,
        }
        for k, name in enumerate(self.names):
            structure_interval = mean_interval(dice[:, k], **options)
            cell[f"dice_{name}"] = _nanmean(dice[:, k])
            cell[f"dice_{name}_ci"] = list(structure_interval) if structure_interval is not None else None
            cell[f"hd95_{name}"] = _nanmean(hd95[:, k])
        return cell
