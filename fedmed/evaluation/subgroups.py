"""How the global model does for each sex, age band and scanner manufacturer at one site.

A cell covering fewer than `min_cell_size` distinct patients is released as
`{"suppressed": True}` and nothing else, not even its size: a metric over a handful of
patients (an AUROC or a Dice over three women over 80 on one scanner) can reveal their diagnoses to
anyone who knows who they are, so such cells never leave the site. Patients, not images,
are counted, because several images of one person protect no one.

The groups of an attribute split the site's test set, whose overall numbers are released,
so one suppressed group could be recovered by subtraction (its size, its positives, its
true positives). Complementary suppression closes that: when the suppressed groups of an
attribute cover fewer than `min_cell_size` patients together, the next smallest groups are
suppressed too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from fedmed.data.check import age_band
from fedmed.data.dicom import DicomMetadata
from fedmed.evaluation.metrics import equalized_odds_difference

__all__ = ["ATTRIBUTES", "CellMetrics", "evaluate_subgroups", "patient_keys"]

ATTRIBUTES = ("sex", "age_band", "manufacturer")

UNKNOWN = "unknown"

_GROUP_OF: dict[str, Callable[[DicomMetadata], str]] = {
    "sex": lambda m: m.sex or UNKNOWN,
    "age_band": lambda m: age_band(m.age_years),
    "manufacturer": lambda m: m.manufacturer or UNKNOWN,
}

# Display order of known group names; others follow alphabetically, "unknown" last.
_ORDER = {"sex": ("F", "M", "O"), "age_band": ("<40", "40-59", "60-79", "80+")}


def patient_keys(metadata: Sequence[DicomMetadata]) -> list[Hashable]:
    """One key per image: its PatientID, or the image itself when it names no patient."""
    return [m.patient_id if m.patient_id is not None else ("image", i) for i, m in enumerate(metadata)]


CellMetrics = Callable[[np.ndarray, int], dict[str, Any]]
"""The task's metrics of the records at these indices, over this many patients (fedmed.tasks)."""


def evaluate_subgroups(
    metadata: Sequence[DicomMetadata],
    cell: CellMetrics,
    *,
    metric: str,
    min_cell_size: int,
    attributes: Sequence[str] = ATTRIBUTES,
) -> dict[str, Any]:
    """The site's overall cell and, per attribute, a cell per group with summaries.

    `cell` computes the task's metrics of a group (it suppresses a cell under
    `min_cell_size` patients itself); `metric` is the headline key the summaries compare.
    Suppressed groups keep their name in `groups` (that a group exists is not sensitive;
    its numbers are) but are left out of `worst_group`, `largest_gap` and
    `equalized_odds_difference`, which are None when fewer than two groups qualify.
    `attributes` chooses the breakdowns; with none, only the overall cell is computed.
    """
    keys = patient_keys(metadata)

    def patients_in(index: np.ndarray) -> int:
        return len({keys[i] for i in index})

    def group_cell(index: np.ndarray) -> dict[str, Any]:
        return cell(index, patients_in(index))

    breakdown = {}
    for attribute in attributes:
        names = np.array([_GROUP_OF[attribute](m) for m in metadata], dtype=object)
        known = _ORDER.get(attribute, ())
        ordered = sorted(set(names), key=lambda n: (n == UNKNOWN, known.index(n) if n in known else len(known), n))
        members = {name: np.flatnonzero(names == name) for name in ordered}
        hidden = _suppressed(members, patients_in, min_cell_size)
        groups = {
            name: {"suppressed": True} if name in hidden else group_cell(index) for name, index in members.items()
        }
        breakdown[attribute] = {"groups": groups, **_summarise(groups, metric)}
    return {"overall": group_cell(np.arange(len(metadata))), "attributes": breakdown}


def _suppressed(
    members: dict[str, np.ndarray], patients_in: Callable[[np.ndarray], int], min_cell_size: int
) -> set[str]:
    """Groups under `min_cell_size` patients, then the smallest others until those hidden
    cover at least `min_cell_size` patients together (or every group is hidden)."""
    sizes = {name: patients_in(index) for name, index in members.items()}
    hidden = {name for name, size in sizes.items() if size < min_cell_size}

    def hidden_patients() -> int:
        return patients_in(np.concatenate([members[name] for name in hidden])) if hidden else 0

    for name in sorted(sizes, key=lambda n: sizes[n]):
        if not hidden or hidden_patients() >= min_cell_size:
            break
        hidden.add(name)
    return hidden


def _summarise(groups: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Worst group and largest gap in `metric`, and (binary cells) the equalized odds difference,
    over the released groups."""
    released = {name: c for name, c in groups.items() if not c.get("suppressed")}
    values = {name: c[metric] for name, c in released.items() if c.get(metric) is not None}
    enough = len(values) >= 2
    return {
        "worst_group": min(values, key=values.__getitem__) if enough else None,
        "largest_gap": float(max(values.values()) - min(values.values())) if enough else None,
        "equalized_odds_difference": equalized_odds_difference(
            (c["sensitivity"], c["specificity"]) for c in released.values() if "sensitivity" in c
        ),
    }
