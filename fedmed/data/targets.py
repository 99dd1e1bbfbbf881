"""What the data layer needs to know about a task's targets, and nothing more.

The dataset reads images and the manifest; a task (fedmed.tasks) says which manifest
columns hold its targets and turns a row into a target array (a 0/1 label, a vector of
labels, a class, a mask read from a DICOM SEG or NIfTI file). This protocol is the seam
between the two, so the data layer never imports a task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fedmed.config.schema import InputConfig

if TYPE_CHECKING:
    from fedmed.data.dataset import ManifestRow


class TargetError(Exception):
    """A row's target cannot be used; the row is skipped with ``reason`` (short, countable) and ``detail``."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason + (f" ({detail})" if detail else ""))


class TargetReader(Protocol):
    """A task's side of reading a site: its columns, its checks and one target per record."""

    target_dtype: torch.dtype

    def manifest_columns(self) -> tuple[str, ...]:
        """Columns beyond ``file`` and ``split`` the manifest must have."""

    def manifest_problem(self, row: Mapping[str, str]) -> str | None:
        """A problem that makes the whole manifest wrong (listed with the others), or None."""

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        """The record's target; raises TargetError (or a DataError) to skip the row."""

    def target_files(self, row: ManifestRow) -> tuple[str, ...]:
        """Files beyond the image that the target is read from (their content keys the cache)."""

    def target_text(self, target: np.ndarray) -> str:
        """An exact text of the target for the dataset fingerprint."""


class BinaryLabels:
    """The historic manifest: a ``label`` column of 0 or 1, checked for the whole manifest at once.

    The binary task (fedmed.tasks.binary) reads its targets this way; it is also what a
    site's data is read with when no task is at hand (``fedmed node start`` without an
    experiment, ``fedmed data check``).
    """

    target_dtype = torch.float32

    def manifest_columns(self) -> tuple[str, ...]:
        return ("label",)

    def manifest_problem(self, row: Mapping[str, str]) -> str | None:
        label = row.get("label", "")
        return None if label in ("0", "1") else f"label '{label}' for '{row.get('file', '')}' must be 0 or 1"

    def read_target(
        self, row: ManifestRow, *, site_dir: Path, sources: Sequence[Path], spec: InputConfig,
    ) -> np.ndarray:
        return np.asarray(float(row.values["label"]), dtype=np.float32)

    def target_files(self, row: ManifestRow) -> tuple[str, ...]:
        return ()

    def target_text(self, target: np.ndarray) -> str:
        return str(int(np.asarray(target).reshape(-1)[0]))
