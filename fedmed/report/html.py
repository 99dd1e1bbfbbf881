"""report.html: a run's results.json for people, as one self-contained page.

The page shows only numbers that are in results.json, at a stated precision: it derives
nothing (no differences, no percentages), so every figure a reader quotes can be found
in the machine-readable file. CSS is inline and figures are data: URIs, so the page opens
offline, travels as one attachment and runs no script.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from fedmed.errors import FedmedError
from fedmed.federation.recorder import RESULTS_FILE, write_text_atomic
from fedmed.report.plots import has_test_loss, plot_convergence, plot_epsilon, png_data_uri, site_colour

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"

HEATMAP_COLORMAP = "YlGnBu"
AUROC_RANGE = (0.5, 1.0)
"""Chance to perfect: the AUROC heatmap's colour scale (each task's metric carries its own)."""
SUPPRESSED_COLOUR = "#e6e6e6"
BINARY_TASK = {
    "kind": "binary",
    "names": [],
    "metric": {"key": "auroc", "label": "AUROC", "scale": list(AUROC_RANGE), "higher_is_better": True},
    "cell_metrics": [
        {"key": key, "label": label} for key, label in
        (("auroc", "AUROC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ece", "ECE"))
    ],
}
"""What a results.json written before tasks existed (no ``task`` section) describes."""


def metric_colour(value: float, scale: tuple[float, float] = AUROC_RANGE) -> str:
    """The heatmap background for a metric's value, as ``#rrggbb``: pale at the low end of `scale`, dark at the high."""
    import matplotlib
    from matplotlib.colors import to_hex

    low, high = scale
    position = min(max((value - low) / (high - low), 0.0), 1.0)
    return to_hex(matplotlib.colormaps[HEATMAP_COLORMAP](position))


def text_colour(background: str) -> str:
    """Black or white, whichever reads on the background."""
    red, green, blue = (int(background[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000000" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45 else "#ffffff"


def render_report(results: dict[str, Any]) -> str:
    """The page for one run's results document (as ``read_results`` returns it).

    Parts the run did not produce (no evaluation after a stopped run, no baselines, a site
    that never trained) are said so in words; nothing is required but the document itself.
    """
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(f3=_fixed(3), f2=_fixed(2), f0=_fixed(0), g=_general, integer=_integer)
    view = _view(results)
    scale = tuple(view["metric"]["scale"])
    environment.globals.update(cell_style=lambda value: _cell_style(value, scale))
    source = resources.files("fedmed.report").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    return environment.from_string(source).render(**view)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/results.json``; return its path.

    Raises:
        FedmedError: the folder or its results.json is missing or not a results document.
    """
    if not run_dir.is_dir():
        raise FedmedError(f"{run_dir}: no such run folder; give the --out folder of `fedmed simulate` or `fedmed run`")
    source = run_dir / RESULTS_FILE
    if not source.is_file():
        raise FedmedError(f"{run_dir}: no {RESULTS_FILE} in this run folder; the run wrote none (see its flower.log)")
    try:
        results = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FedmedError(f"{source}: unreadable ({error}); rerun the experiment to write it again") from None
    if not isinstance(results, dict) or not isinstance(results.get("rounds", []), list):
        raise FedmedError(f"{source}: not a fedmed results document (see docs/results.md)")
    path = run_dir / REPORT_FILE
    write_text_atomic(path, render_report(results))
    return path


# ---------------------------------------------------------------- view


def _view(results: dict[str, Any]) -> dict[str, Any]:
    """What the template shows, picked out of the document with defaults; no new numbers."""
    config = _dict(results.get("config"))
    site_results = _dict(results.get("sites"))
    sites = [str(s) for s in (_dict(config.get("data")).get("sites") or site_results)]
    evaluation = results.get("evaluation")
    task = _task(results)
    metric = task["metric"]
    scale = tuple(metric["scale"])
    convergence = plot_convergence(results, sites, metric=metric["key"], label=metric["label"])
    epsilon = plot_epsilon(results, sites)
    rounds = [r for r in results.get("rounds") or [] if isinstance(r, dict)]
    return {
        "name": config.get("name") or "unnamed run",
        "task": task,
        "metric": metric,
        "test_loss": has_test_loss(results, sites),
        "columns": [m for m in task["cell_metrics"] if isinstance(m, dict) and m.get("key")],
        "status": results.get("status") or "unknown",
        "status_reason": results.get("status_reason"),
        "version": results.get("fedmed_version"),
        "started": results.get("started"),
        "wall_seconds": results.get("wall_seconds"),
        "sites": sites,
        "site_colours": {site: site_colour(i) for i, site in enumerate(sites)},
        "site_results": {site: _dict(site_results.get(site)) for site in sites},
        "planned_rounds": _dict(config.get("training")).get("rounds"),
        "last_round": rounds[-1].get("round") if rounds else None,
        "model": _dict(config.get("model")).get("name"),
        "training": _dict(config.get("training")),
        "privacy": _dict(config.get("privacy")),
        "secure_aggregation": _dict(config.get("secure_aggregation")).get("enabled"),
        "unsafe_reproducible": bool(results.get("unsafe_reproducible")),
        "convergence_png": png_data_uri(convergence) if convergence else None,
        "epsilon_png": png_data_uri(epsilon) if epsilon else None,
        "evaluation": _evaluation_view(evaluation, sites) if isinstance(evaluation, dict) else None,
        "failures": _failures(rounds, evaluation if isinstance(evaluation, dict) else {}),
        "legend_stops": [metric_colour(scale[0] + i * (scale[1] - scale[0]) / 10, scale) for i in range(11)],
        "suppressed_colour": SUPPRESSED_COLOUR,
    }


def _task(results: dict[str, Any]) -> dict[str, Any]:
    """The run's task as results.json describes it (binary for a document from before tasks)."""
    task = _dict(results.get("task")) or BINARY_TASK
    metric = _dict(task.get("metric"))
    if not metric.get("key") or not isinstance(metric.get("scale"), list) or len(metric["scale"]) != 2:
        task = BINARY_TASK
    return task


def _evaluation_view(evaluation: dict[str, Any], sites: list[str]) -> dict[str, Any]:
    matrix = _dict(evaluation.get("matrix"))
    models = [m for m in evaluation.get("models") or [] if isinstance(m, dict)]
    return {
        "threshold": evaluation.get("threshold"),
        "confidence": evaluation.get("confidence"),
        "bootstrap_samples": evaluation.get("bootstrap_samples"),
        "finding_gap": evaluation.get("finding_gap"),
        "findings": [f for f in evaluation.get("findings") or [] if isinstance(f, dict)],
        "rows": [
            {"label": m.get("label") or m.get("id"), "cells": [_dict(matrix.get(m.get("id"))).get(s) for s in sites]}
            for m in models
        ],
        "refused": _dict(evaluation.get("refused")),
        "comparison": {site: _dict(c) for site, c in _dict(evaluation.get("comparison")).items()},
        "subgroups": {site: _dict(s) for site, s in _dict(evaluation.get("subgroups")).items()},
    }


def _failures(rounds: list[dict[str, Any]], evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Every refused or failed step, every round whose masked sum was abandoned, and the
    refusals of the end-of-run evaluation (no round)."""
    rows = [{"round": r.get("round"), **_dict(f)} for r in rounds for f in r.get("failures") or []]
    for r in rounds:
        abandoned = _dict(r.get("secure_aggregation")).get("abandoned")
        if abandoned:
            rows.append({"round": r.get("round"), "stage": "secure aggregation", "node": None, "reason": abandoned})
    rows += [{"round": None, **_dict(f)} for f in evaluation.get("failures") or []]
    return rows


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- formatting


def _fixed(decimals: int) -> Any:
    def format_fixed(value: Any) -> str:
        return "—" if not _is_number(value) else f"{value:.{decimals}f}"

    return format_fixed


def _general(value: Any) -> str:
    return "—" if not _is_number(value) else f"{value:g}"


def _integer(value: Any) -> str:
    return "—" if not _is_number(value) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell_style(value: Any, scale: tuple[float, float]) -> str:
    """Inline background and text colour of a heatmap cell holding this value of the task's metric."""
    if not _is_number(value):
        return ""
    background = metric_colour(value, scale)
    return f"background-color:{background};color:{text_colour(background)}"
