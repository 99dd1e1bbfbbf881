"""Everything a run produced, per round and per site, as results.json: the server's record of the run.

Per-site numbers are kept per site: a federation that averages them away cannot show
that it fails one hospital. Metric names and the pooled metric come from the run's task
(fedmed.tasks), never from code that assumes AUROC. The recorder also appends one line
per event to progress.jsonl, which `fedmed simulate` follows to draw its progress
display; fedmed.report renders the finished results.json for people.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmed import __version__
from fedmed.config import ExperimentConfig
from fedmed.config.schema import check_site_id
from fedmed.evaluation.findings import find_findings
from fedmed.federation.messages import (
    GLOBAL_MODEL,
    POOLED_MODEL,
    SIMULATION,
    local_model_id,
    model_label,
    without_model_id,
)
from fedmed.privacy.audit import privacy_statement
from fedmed.secure.keys import public_key_pem
from fedmed.tasks import create_task

RESULTS_FILE = "results.json"
PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "model.pt"
LEDGERS_DIR = "ledgers"


@dataclass
class RoundRecord:
    round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float | None]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    secure_aggregation: dict[str, Any] | None = None
    pooled: float | None = None
    """The task's metric over every site's test set pooled, after this round."""


class RunRecorder:
    """Collects per-site metrics during a run and writes results.json at the end."""

    def __init__(self, out_dir: Path, config: ExperimentConfig) -> None:
        self.out_dir = out_dir
        self.config = config
        self.task = create_task(config.task)
        self.metric = self.task.metric.key
        self.rounds: dict[int, RoundRecord] = {}
        self.started = time.time()
        self._releases: dict[str, tuple[list[float], dict[str, float | None]]] = {}
        self._ledgers: dict[str, dict[int, str]] = {}
        self.run_id: str | None = None
        self.manifest: Path | None = None
        self.kind = SIMULATION
        self._models: list[str] = []
        self._refused: dict[str, str] = {}
        self._local_models: dict[str, dict[str, float]] = {}
        self._cross_site: dict[str, dict[str, dict[str, Any]]] = {}
        self._subgroups: dict[str, dict[str, Any]] = {}
        self._evaluation_failures: list[dict[str, Any]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PROGRESS_FILE).write_text("", encoding="utf-8")
        self.emit(
            "start", rounds=config.training.rounds, sites=config.data.sites, metric=self.metric,
            metric_label=self.task.metric.label,
        )

    def emit(self, event: str, **fields: Any) -> None:
        """Append one progress event (a JSON line) for whoever follows the run."""
        with open(self.out_dir / PROGRESS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def _round(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    def record_train(self, server_round: int, site: str, metrics: dict[str, float]) -> None:
        self._round(server_round).train[site] = metrics

    def set_run(self, *, run_id: str, manifest: Path, kind: str) -> None:
        """The Flower run id, the key manifest the server verified sites against, and the kind of run."""
        self.run_id = run_id
        self.manifest = Path(manifest)
        self.kind = kind

    def record_ledger(self, site: str, lines: list[str], public_key: Ed25519PublicKey) -> None:
        """Keep the consortium's copy of a site's ledger: ledgers/<site>.jsonl and .pub.

        The caller has verified the site and each entry's signature with the site's key
        from the consortium's manifest, which is the key written beside the copy. Entries
        are kept by index, so a site resending its ledger adds nothing twice; whether the
        whole chain verifies is for ``fedmed audit`` to say.
        """
        check_site_id(site)  # it names files: never a path
        ledger = self._ledgers.setdefault(site, {})
        for line in lines:
            ledger[int(json.loads(line)["index"])] = line
        folder = self.out_dir / LEDGERS_DIR
        folder.mkdir(exist_ok=True)
        (folder / f"{site}.jsonl").write_text("".join(ledger[i] + "\n" for i in sorted(ledger)), encoding="utf-8")
        (folder / f"{site}.pub").write_text(public_key_pem(public_key), encoding="utf-8")

    def record_evaluate(
        self, server_round: int, site: str, metrics: dict[str, float | None], release: list[float], *, node_id: int,
    ) -> None:
        """A site's round evaluation, with what it released for the pooled metric.

        A release the task cannot read (a site running other code) is recorded as a failure
        and left out of the pooled metric; the site's own numbers are kept.
        """
        self._round(server_round).evaluate[site] = metrics
        try:
            self.task.pooled([(release, metrics)])
        except ValueError as error:
            self.record_failure(server_round, "evaluate", node_id, f"site {site}'s release is unreadable: {error}")
            self._releases.pop(site, None)
            return
        self._releases[site] = (list(release), dict(metrics))

    def record_failure(self, server_round: int | None, stage: str, node_id: int, reason: str) -> None:
        """A site's refusal or absence; ``server_round`` None for the end-of-run evaluation."""
        failure = {"stage": stage, "node": node_id, "reason": reason}
        if server_round is None:
            self._evaluation_failures.append(failure)
            self.emit("failure", **failure)
            return
        self._round(server_round).failures.append(failure)
        self.emit("failure", round=server_round, **failure)

    def record_secure_aggregation(self, server_round: int, **summary: Any) -> None:
        """Who was in the round's masked sum, who dropped, or why the round was abandoned."""
        self._round(server_round).secure_aggregation = summary
        self.emit("secure-aggregation", round=server_round, **summary)

    def record_local_model(self, site: str, metrics: dict[str, float]) -> None:
        """A site trained and shared a model on its own data alone."""
        self._local_models[site] = metrics
        self.emit("local-model", site=site, metrics=metrics)

    def record_model_refused(self, model_id: str, reason: str) -> None:
        self._refused[model_id] = reason

    def set_models(self, model_ids: list[str]) -> None:
        """The models sent for cross-site evaluation, in the order the report lists them."""
        self._models = list(model_ids)

    def record_cross_site(self, site: str, cells: dict[str, dict[str, Any]], subgroups: dict[str, Any]) -> None:
        """One site's metrics for every model, and its subgroup analysis of the global model."""
        self._cross_site[site] = cells
        self._subgroups[site] = subgroups
        self.emit("cross-site", site=site, cells=cells)

    def pooled_metric(self) -> float | None:
        """The task's metric over all sites' test sets pooled, from each site's latest release."""
        if not self._releases:
            return None
        return self.task.pooled(list(self._releases.values()))

    def finish_train(self, server_round: int) -> None:
        record = self._round(server_round)
        self.emit("train", round=server_round, sites=record.train)

    def finish_evaluate(self, server_round: int) -> None:
        record = self._round(server_round)
        record.pooled = self.pooled_metric()
        self.emit("evaluate", round=server_round, sites=record.evaluate, pooled=record.pooled)

    def results(self, *, status: str, reason: str | None) -> dict[str, Any]:
        """The results document: task, config, rounds, per-site finals and the pooled metric."""
        rounds = [
            {
                "round": r.round,
                "sites": {
                    site: {**r.train.get(site, {}), **_prefixed("test_", r.evaluate.get(site, {}))}
                    for site in sorted(set(r.train) | set(r.evaluate))
                },
                "failures": r.failures,
                "secure_aggregation": r.secure_aggregation,
                f"global_{self.metric}": r.pooled,
            }
            for r in sorted(self.rounds.values(), key=lambda r: r.round)
        ]
        sites = {site: self._site_summary(site) for site in self.config.data.sites}
        tested = [s for s in sites.values() if s.get("n_test")]
        return {
            "fedmed_version": __version__,
            "status": status,
            "status_reason": reason,
            "started_at": self.started,
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "wall_seconds": time.time() - self.started,
            "kind": self.kind,
            "run_id": self.run_id,
            "manifest": self._manifest_record(),
            "unsafe_reproducible": self.config.training.unsafe_reproducible,
            "task": self.task.describe(),
            "config": self._config_record(),
            "rounds": rounds,
            "sites": sites,
            "global": {
                self.metric: self.pooled_metric(),
                "n_test": sum(s["n_test"] for s in tested),
                "sites_evaluated": len(tested),
            },
            "evaluation": self._evaluation(),
        }

    def _evaluation(self) -> dict[str, Any]:
        """The cross-site matrix, subgroup analyses and findings (docs/results.md)."""
        settings = self.config.evaluation
        sites = self.config.data.sites
        matrix = {model: {site: self._cross_site.get(site, {}).get(model) for site in sites} for model in self._models}

        def metric(model: str, site: str) -> float | None:
            return (matrix.get(model, {}).get(site) or {}).get(self.metric)

        subgroups = {site: self._subgroups[site] for site in sites if site in self._subgroups}
        return {
            "threshold": settings.threshold,
            "confidence": settings.confidence,
            "bootstrap_samples": settings.bootstrap_samples,
            "finding_gap": settings.finding_gap,
            "models": [{"id": model, "label": model_label(model)} for model in self._models],
            "refused": dict(self._refused),
            "failures": list(self._evaluation_failures),
            "matrix": matrix,
            "subgroups": subgroups,
            "comparison": {
                site: {
                    "federated": metric(GLOBAL_MODEL, site),
                    "local": metric(local_model_id(site), site),
                    "pooled": metric(POOLED_MODEL, site),
                    "unseen": metric(without_model_id(site), site),
                }
                for site in sites
            },
            "findings": find_findings(
                subgroups, metrics=[(m.key, m.label) for m in self.task.finding_metrics()],
                min_gap=settings.finding_gap, confidence=settings.confidence,
            ),
        }

    def _site_summary(self, site: str) -> dict[str, Any]:
        trained = [r.train[site] for r in self.rounds.values() if site in r.train]
        evaluated = [r.evaluate[site] for r in self.rounds.values() if site in r.evaluate]
        last_train = trained[-1] if trained else {}
        last_eval = evaluated[-1] if evaluated else {}
        return {
            "privacy": self._privacy_section(site),
            "rounds_trained": len(trained),
            "n_train": last_train.get("num_examples"),
            "n_test": last_eval.get("num_examples"),
            self.metric: last_eval.get(self.metric),
            "test": {k: v for k, v in last_eval.items() if k not in _BOOKKEEPING},
            "epsilon": last_train.get("epsilon"),
            "delta": last_train.get("delta"),
            "noise_multiplier": last_train.get("noise_multiplier"),
            "sample_rate": last_train.get("sample_rate"),
            "steps": sum(t.get("steps", 0) for t in trained),
            "skipped_files": last_eval.get("skipped_files", last_train.get("skipped_files")),
            "train_seconds": sum(t.get("seconds", 0.0) for t in trained),
            "eval_seconds": sum(e.get("seconds", 0.0) or 0.0 for e in evaluated),
            "local_model": self._local_models.get(site),
        }

    def write(self, *, status: str, reason: str | None = None) -> Path:
        """Write results.json atomically and announce the end of the run."""
        path = self.out_dir / RESULTS_FILE
        write_json_atomic(path, self.results(status=status, reason=reason))
        self.emit("end", status=status, reason=reason, pooled=self.pooled_metric())
        return path


    def _config_record(self) -> dict[str, Any]:
        """The experiment as validated; a deployed run leaves out what only a simulation reads
        (the data folder, demo data, cache, simulated hospitals): each hospital has its own."""
        if self.kind == SIMULATION:
            return self.config.model_dump(mode="json")
        return self.config.model_dump(
            mode="json", exclude={"simulation": True, "data": {"root", "synthesize", "cache_dir"}},
        )

    def _manifest_record(self) -> dict[str, str] | None:
        """Where the key manifest was and its SHA-256, for an auditor to compare with their copy."""
        if self.manifest is None:
            return None
        try:
            digest = hashlib.sha256(self.manifest.read_bytes()).hexdigest()
        except OSError:
            digest = None
        return {"path": str(self.manifest.resolve()), "sha256": digest}

    def _privacy_section(self, site: str) -> dict[str, Any] | None:
        """The site's guarantee, from its latest ledger entry, in the audit's own words."""
        ledger = self._ledgers.get(site)
        if not ledger:
            return None
        last = json.loads(ledger[max(ledger)])
        return {
            "statement": privacy_statement(
                site=site, epsilon=last["epsilon"], delta=last["delta"], n_records=last["n_records"],
                budget_epsilon=last["budget_epsilon"], accountant=last["accountant"],
            ),
            "epsilon": last["epsilon"],
            "delta": last["delta"],
            "budget_epsilon": last["budget_epsilon"],
            "n_records": last["n_records"],
            "accountant": last["accountant"],
            "dataset_fingerprint": last["dataset_fingerprint"],
            "ledger": f"{LEDGERS_DIR}/{site}.jsonl",
        }


_BOOKKEEPING = {"num_examples", "skipped_files", "seconds"}
"""Evaluation entries that are not metrics of the model."""


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def clear_run_folder(out_dir: Path) -> None:
    """Make the run folder and remove a previous run's results and progress from it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS_FILE, PROGRESS_FILE):
        (out_dir / stale).unlink(missing_ok=True)


def read_results(out_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when the ServerApp wrote none (it failed)."""
    path = out_dir / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON through a temporary file so readers never see half a document."""
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
