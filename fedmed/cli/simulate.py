"""`fedmed simulate`: a whole federation on this machine, through Flower's simulation engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedmed.config import ExperimentConfig, load_config
from fedmed.federation.runtime import RunStatus
from fedmed.federation.simulation import simulate as run_simulation
from fedmed.report import write_report

console = Console(highlight=False, soft_wrap=True)  # whole lines in logs and CI


def simulate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. configs/quickstart.yaml.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for results.json, model.pt and logs.")],
) -> None:
    """Train a federated model over simulated hospitals, with DP-SGD at every site."""
    follow_run(config, out, lambda experiment, on_event: run_simulation(
        experiment, config, out, on_event=on_event, announce=lambda text: console.print(f"[dim]{text}[/]"),
    ))


Start = Callable[[ExperimentConfig, Callable[[dict[str, Any]], None]], tuple[RunStatus, dict[str, Any] | None]]
"""Runs an experiment, handing each progress event to the callback; returns status and results."""


def follow_run(config: Path, out: Path, start: Start) -> None:
    """What `simulate` and `run` share: announce the experiment, print its progress, finish."""
    experiment = load_config(config)
    started = time.monotonic()
    announce_experiment(experiment)
    status, results = start(experiment, ProgressPrinter(experiment.training.rounds))
    finish(status, results, out, time.monotonic() - started)


def finish(status: RunStatus, results: dict[str, Any] | None, out: Path, elapsed: float) -> None:
    """Print a run's outcome; exit 1 unless it completed."""
    if results is None:
        console.print(f"[bold red]run failed[/] ({status.status}): {status.details}")
        console.print(f"Flower's log: {out / 'flower.log'}")
        raise typer.Exit(1)
    print_results(results)
    console.print(f"run {results['status']} in {elapsed:.0f} s; results in {out / 'results.json'}")
    console.print(f"report: {write_report(out)}")
    if results["status"] != "completed":
        console.print(f"[bold red]stopped:[/] {results['status_reason']}")
        raise typer.Exit(1)


def announce_experiment(experiment: ExperimentConfig) -> None:
    console.print(
        f"[bold]{experiment.name}[/]: {len(experiment.data.sites)} hospitals, "
        f"{experiment.model.name}, {experiment.training.rounds} rounds, "
        + _privacy_summary(experiment.privacy)
    )


def _privacy_summary(privacy: Any) -> str:
    if privacy.target_epsilon is not None:
        return f"DP-SGD epsilon <= {privacy.target_epsilon:g} per site (delta {privacy.delta:g})"
    return f"DP-SGD noise {privacy.noise_multiplier:g} (delta {privacy.delta:g})"


class ProgressPrinter:
    """One line per stage of each round: loss and epsilon per site, then the task's test metric."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.metric, self.label = "auroc", "AUROC"

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        prefix = f"round {event['round']}/{self.rounds}" if "round" in event else "end of run"
        if kind == "start":
            self.metric, self.label = event.get("metric", self.metric), event.get("metric_label", self.label)
        elif kind == "train":
            sites = "  ".join(
                f"{site} eps {m['epsilon']:.2f}"
                for site, m in sorted(event["sites"].items())
            )
            console.print(f"{prefix} train     {sites}")
        elif kind == "evaluate":
            sites = "  ".join(
                f"{site} {_fmt(m.get(self.metric))}" for site, m in sorted(event["sites"].items())
            )
            console.print(f"{prefix} test {self.label} {sites}  pooled {_fmt(event.get('pooled'))}")
        elif kind == "failure":
            console.print(f"{prefix} [yellow]{event['stage']} refused:[/] {event['reason']}")
        elif kind == "local-model":
            metrics = event["metrics"]
            console.print(
                f"local model {event['site']}: trained on its data alone, eps {metrics['epsilon']:.2f} (cumulative)"
            )
        elif kind == "cross-site":
            cells = "  ".join(
                f"{model} {'suppressed' if cell.get('suppressed') else _fmt(cell.get(self.metric))}"
                for model, cell in event["cells"].items()
            )
            console.print(f"cross-site at {event['site']}: {self.label} {cells}")
        elif kind == "secure-aggregation" and "abandoned" in event:
            console.print(f"{prefix} [yellow]abandoned:[/] {event['abandoned']}")
        elif kind == "secure-aggregation":
            dropped = f", recovered from {', '.join(event['dropped'])}" if event["dropped"] else ""
            console.print(
                f"{prefix} masked sum of {len(event['sites'])} sites (threshold {event['threshold']}{dropped}) "
                f"in {event['seconds']:.2f} s"
            )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_results(results: dict[str, Any]) -> None:
    metric = (results.get("task") or {}).get("metric") or {"key": "auroc", "label": "AUROC"}
    key, label = metric["key"], metric["label"]
    table = Table(
        "site", "n train", "n test", label, "eps rounds", "eps total", "delta",
        title=(
            "per site (epsilon is cumulative for the site's data: after the last round, and in all, "
            "local model included)"
        ),
    )
    for site, s in results["sites"].items():
        spent = (s.get("privacy") or {}).get("epsilon")
        table.add_row(
            site, str(s["n_train"] or "-"), str(s["n_test"] or "-"), _fmt(s.get(key)),
            _fmt(s["epsilon"]), _fmt(spent), f"{s['delta']:g}" if s["delta"] else "-",
        )
    console.print(table)
    console.print(f"pooled test {label} over all sites: [bold]{_fmt(results['global'].get(key))}[/]")
    evaluation = results.get("evaluation") or {}
    comparison = evaluation.get("comparison", {})
    if any(v is not None for row in comparison.values() for k, v in row.items() if k != "federated"):
        table = Table(
            "site", "federated", "site alone", "pooled data", "unseen (left out)", title=f"test {label} by model"
        )
        for site, row in comparison.items():
            table.add_row(site, *(_fmt(row[k]) for k in ("federated", "local", "pooled", "unseen")))
        console.print(table)
    for model, reason in evaluation.get("refused", {}).items():
        console.print(f"[yellow]no {model} model:[/] {reason}")
    findings = evaluation.get("findings")
    if findings:
        console.print("[bold]findings[/]")
        for finding in findings:
            console.print(f"  {finding['text']}")
    elif evaluation.get("subgroups"):
        console.print(
            f"no subgroup or site gap above {evaluation['finding_gap']:g} {label} with separate "
            f"{evaluation['confidence']:.0%} intervals"
        )
