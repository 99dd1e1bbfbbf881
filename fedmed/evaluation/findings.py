"""Subgroup and site gaps worth a sentence in the report.

A gap is a finding only when it is larger than `min_gap` and the two bootstrap intervals do
not overlap: with small subgroups a large point gap is often noise, and a report that
flags noise teaches readers to ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["describe_group", "find_findings"]

_SEX = {
    "F": "female patients",
    "M": "male patients",
    "O": "patients of other sex",
    "unknown": "patients with sex not recorded",
}
_AGE = {
    "<40": "patients under 40",
    "80+": "patients aged 80 or over",
    "unknown": "patients with age not recorded",
}


def find_findings(
    subgroups: dict[str, dict[str, Any]], *, metrics: Sequence[tuple[str, str]] = (("auroc", "AUROC"),),
    min_gap: float, confidence: float,
) -> list[dict[str, Any]]:
    """Gaps between the best and worst group of each site, attribute and metric, and between sites.

    Parameters:
        subgroups: `evaluation.subgroups` of results.json, site to `{"overall", "attributes"}`.
        metrics: (key, label) of each metric whose gaps count, the task's headline first
            (fedmed.tasks: AUROC, Dice, or one per label or structure); between sites only the
            headline is compared. Every metric here is better when higher.
        min_gap: a gap must exceed this to count.
        confidence: level of the intervals, only for the text.

    Returns:
        `{"site", "attribute", "metric", "worse", "better", "gap", "text"}` per finding, largest
        gap first; `site` is None and `attribute` "site" for a gap between sites.
    """
    found: list[tuple[float, dict[str, Any]]] = []
    for site, evaluation in subgroups.items():
        if not evaluation:
            continue
        for attribute, summary in (evaluation.get("attributes") or {}).items():
            for key, label in metrics:
                pair = _best_and_worst(summary.get("groups") or {}, key, min_gap)
                if pair is not None:
                    found.append(_finding(site, attribute, key, label, *pair, confidence))
    overall = {site: evaluation.get("overall") or {} for site, evaluation in subgroups.items() if evaluation}
    key, label = metrics[0]
    pair = _best_and_worst(overall, key, min_gap)
    if pair is not None:
        found.append(_finding(None, "site", key, label, *pair, confidence))
    found.sort(key=lambda item: -item[0])
    return [finding for _, finding in found]


def describe_group(attribute: str, name: str) -> str:
    """A group in plain words, e.g. "female patients" or "images from Acme scanners"."""
    if attribute == "sex":
        return _SEX.get(name, f"patients of sex {name}")
    if attribute == "age_band":
        return _AGE.get(name, f"patients aged {name}")
    if attribute == "manufacturer":
        if name == "unknown":
            return "images with no scanner manufacturer recorded"
        return f"images from {name} scanners"
    return f"{attribute} {name}"


Rated = tuple[str, dict[str, Any]]


def _best_and_worst(cells: dict[str, dict[str, Any]], key: str, min_gap: float) -> tuple[Rated, Rated] | None:
    """The worst and best rated cells when their gap in `key` exceeds `min_gap` and intervals are disjoint."""
    interval = f"{key}_ci"
    rated = [
        (name, cell)
        for name, cell in cells.items()
        if cell and not cell.get("suppressed") and cell.get(key) is not None and cell.get(interval) is not None
    ]
    if len(rated) < 2:
        return None
    worse = min(rated, key=lambda item: item[1][key])
    better = max(rated, key=lambda item: item[1][key])
    gap = better[1][key] - worse[1][key]
    if gap > min_gap and worse[1][interval][1] < better[1][interval][0]:
        return worse, better
    return None


def _finding(
    site: str | None, attribute: str, key: str, label: str, worse: Rated, better: Rated, confidence: float
) -> tuple[float, dict[str, Any]]:
    """(unrounded gap for sorting, the finding as results.json holds it)."""
    gap = better[1][key] - worse[1][key]
    shown = round(gap, 2)
    level = f"{round(confidence * 100, 1):g}%"
    numbers = f"({_numbers(worse[1], key, level)}, vs {_numbers(better[1], key, level)})"
    if attribute == "site":
        text = f"{label} at {worse[0]} is {shown:.2f} lower than at {better[0]} {numbers}."
    else:
        text = (
            f"{label} for {describe_group(attribute, worse[0])} at {site} is {shown:.2f} lower than "
            f"for {describe_group(attribute, better[0])} {numbers}."
        )
    finding = {
        "site": site, "attribute": attribute, "metric": key, "worse": worse[0], "better": better[0], "gap": shown,
        "text": text,
    }
    return gap, finding


def _numbers(cell: dict[str, Any], key: str, level: str) -> str:
    low, high = cell[f"{key}_ci"]
    return f"{cell[key]:.3f}, {level} CI {low:.3f}-{high:.3f}, n={cell['n']}"
