"""The report's figures, drawn from results.json alone: PNG bytes, ready to inline.

matplotlib is imported inside the functions: everything that imports ``fedmed.report``
(the ServerApp, the simulation) would otherwise pay for it at start-up.
"""

from __future__ import annotations

import base64
import io
from typing import Any

SITE_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
"""matplotlib's tab10: one colour per site, the same in every figure."""
POOLED_COLOUR = "#222222"
FIGURE_DPI = 100


def site_colour(index: int) -> str:
    """The colour of the index-th site (cycling after ten sites)."""
    return SITE_COLOURS[index % len(SITE_COLOURS)]


def png_data_uri(png: bytes) -> str:
    """A ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def has_test_loss(results: dict[str, Any], sites: list[str]) -> bool:
    """Whether any site reported a test loss (a segmentation site does not: see plot_convergence)."""
    return any(v is not None for site in sites for v in _series(results.get("rounds") or [], site, "test_eval_loss"))


def plot_convergence(
    results: dict[str, Any], sites: list[str], *, metric: str = "auroc", label: str = "AUROC",
) -> bytes | None:
    """The task's test metric per site and pooled, and test loss per site, per round; None without rounds.

    Test loss, not training loss: a site keeps its training loss (a statistic of its
    training data, not covered by DP) to itself. Without any test loss (segmentation keeps
    label maps, not the soft outputs a loss needs) the figure has the metric panel alone.
    """
    rounds = results.get("rounds") or []
    if not rounds:
        return None
    plt, ticker = _pyplot()
    with_loss = has_test_loss(results, sites)
    with plt.rc_context(_STYLE):
        figure, panels = plt.subplots(1, 2 if with_loss else 1, figsize=(10, 3.4), layout="constrained", squeeze=False)
        metric_axes = panels[0][0]
        numbers = [r.get("round") for r in rounds]
        for index, site in enumerate(sites):
            _line(metric_axes, numbers, _series(rounds, site, f"test_{metric}"), site_colour(index), site)
        pooled = [r.get(f"global_{metric}") for r in rounds]
        _line(metric_axes, numbers, pooled, POOLED_COLOUR, "pooled", dashed=True)
        metric_axes.set_title(f"Test {label}")
        if with_loss:
            loss_axes = panels[0][1]
            for index, site in enumerate(sites):
                _line(loss_axes, numbers, _series(rounds, site, "test_eval_loss"), site_colour(index), site)
            loss_axes.set_title("Test loss")
        for axes in panels[0]:
            _finish_axes(axes, ticker)
        _legend(figure, metric_axes)  # the same colours in both panels: one legend
        return _png(figure, plt)


def plot_epsilon(results: dict[str, Any], sites: list[str]) -> bytes | None:
    """Cumulative epsilon per site and round, each site's budget dashed; None without rounds.

    A site's local-only model spends after the last round: a star one step further on, so
    the plot ends at what the site has really spent.
    """
    rounds = results.get("rounds") or []
    if not rounds:
        return None
    plt, ticker = _pyplot()
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=(10, 3.4), layout="constrained")
        numbers = [r.get("round") for r in rounds]
        for index, site in enumerate(sites):
            colour = site_colour(index)
            _line(axes, numbers, _series(rounds, site, "epsilon"), colour, site)
            privacy = (results.get("sites") or {}).get(site, {}) or {}
            _local_model_spend(axes, numbers, _series(rounds, site, "epsilon"), privacy.get("local_model"), colour)
            budget = (privacy.get("privacy") or {}).get("budget_epsilon")
            if budget is not None:
                axes.axhline(budget, color=colour, linestyle="--", linewidth=1.2, label=f"{site} budget")
        local = any((results.get("sites") or {}).get(site, {}).get("local_model") for site in sites)
        axes.set_title(
            "Epsilon spent (cumulative), budget dashed" + ("; star: after the local-only model" if local else "")
        )
        _finish_axes(axes, ticker)
        if local and all(isinstance(n, int) for n in numbers):
            axes.set_xticks([*numbers, numbers[-1] + 1], [str(n) for n in numbers] + ["local model"])
        axes.set_ylim(bottom=0)
        _legend(figure, axes)
        return _png(figure, plt)


_STYLE = {
    "text.parse_math": False,  # a site called "a$b" is a name, not TeX
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "legend.frameon": False,
}


def _pyplot() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call again
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    return plt, ticker


def _series(rounds: list[dict[str, Any]], site: str, key: str) -> list[float | None]:
    return [((r.get("sites") or {}).get(site) or {}).get(key) for r in rounds]


def _line(axes: Any, x: list[Any], y: list[float | None], colour: str, label: str, *, dashed: bool = False) -> None:
    points = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    axes.plot(xs, ys, color=colour, linewidth=2, marker="o", markersize=5, label=label,
              linestyle="--" if dashed else "-")


def _local_model_spend(
    axes: Any, rounds: list[Any], spent: list[float | None], local_model: dict[str, Any] | None, colour: str,
) -> None:
    known = [(r, e) for r, e in zip(rounds, spent, strict=True) if r is not None and e is not None]
    if not local_model or local_model.get("epsilon") is None or not known:
        return
    last_round, last_spent = known[-1]
    axes.plot([last_round, last_round + 1], [last_spent, local_model["epsilon"]], color=colour, linestyle=":",
              linewidth=1.5, marker="*", markersize=11, markevery=[1])


def _finish_axes(axes: Any, ticker: Any) -> None:
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _legend(figure: Any, axes: Any) -> None:
    """Beside the plot, where it hides no line."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)


def _png(figure: Any, plt: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    finally:
        plt.close(figure)
    return buffer.getvalue()
