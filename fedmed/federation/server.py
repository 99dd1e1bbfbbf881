"""The server's side of a run: FedAvg that keeps every site's numbers.

Flower's FedAvg averages the sites' metrics into one; here each reply is recorded under
its site id before aggregation, refusals are recorded with their reasons, and a round
with fewer replies than ``min_sites`` stops the run instead of publishing a model that
too few hospitals shaped. A reply counts only once the site that signed it is verified
against the consortium's key manifest (fedmed.federation.identity): what a message says
its site is, is never taken on trust.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedmed import __version__
from fedmed.config import ExperimentConfig, load_config
from fedmed.errors import FedmedError
from fedmed.federation.cross_site import cross_site_evaluation, load_baselines
from fedmed.federation.identity import SiteRegistry, UnverifiedSite
from fedmed.federation.ledgers import record_ledger
from fedmed.federation.messages import SIMULATION, Key, encode_plan, scalars, state_from_arrays
from fedmed.federation.polling import PromptGrid
from fedmed.federation.recorder import MODEL_FILE, RunRecorder
from fedmed.federation.secure_rounds import RECORD, Field, secure_aggregate
from fedmed.models import create_model, float_state
from fedmed.secure.manifest import MANIFEST_FILE, load_manifest
from fedmed.secure.secagg import RoundAbandoned
from fedmed.tasks import create_task

log = logging.getLogger("fedmed.server")


class TooFewSites(FedmedError):
    """Fewer sites replied than the run's minimum; the run stops cleanly."""


class SiteTrackingFedAvg(FedAvg):
    """FedAvg (McMahan et al. 2017) over float weights, recording each site's metrics.

    FedProx (Li et al. 2020) needs nothing more here: its proximal term is applied at
    the sites, from the ``proximal_mu`` in the round plan.
    """

    def __init__(self, recorder: RunRecorder, *, min_sites: int, registry: SiteRegistry, secure: bool) -> None:
        super().__init__(
            min_train_nodes=min_sites,
            min_evaluate_nodes=min_sites,
            min_available_nodes=min_sites,
            weighted_by_key=Key.NUM_EXAMPLES,
            arrayrecord_key=Key.ARRAYS,
            configrecord_key=Key.CONFIG,
        )
        self.recorder = recorder
        self.min_sites = min_sites
        self.registry = registry
        """The consortium's site keys and which node is which site."""
        self.secure = secure
        """Updates are securely aggregated: train replies carry adverts, not weights."""
        self._grid: Grid | None = None
        self._global: ArrayRecord | None = None
        self._trained_nodes: list[int] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid, self._global = grid, arrays  # secure aggregation talks to the sites again
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask the sites that trained this round: a site evaluates only such a round's model."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        return [m for m in messages if m.metadata.dst_node_id in self._trained_nodes]

    def _sort_replies(self, server_round: int, replies: Iterable[Message], stage: str) -> list[tuple[str, Message]]:
        # FedAvg's check demands arrays in every train reply, which under secure aggregation hold
        # none, and the same metric keys in every reply, for it to average them. Evaluate
        # replies are recorded per site instead, and a site leaves out a metric it cannot
        # define (HD95 where its model outlines no structure in any test case), so their keys
        # may differ: only plain train replies are checked.
        validate = stage == "train" and not self.secure
        valid, failed = self._check_and_log_replies(list(replies), is_train=stage == "train", validate=validate)
        for msg in failed:
            self.recorder.record_failure(server_round, stage, msg.metadata.src_node_id, msg.error.reason or "")
        verified = []
        for msg in valid:
            try:
                verified.append((self.registry.identify(msg), msg))
            except UnverifiedSite as error:
                log.warning("%s", error)
                self.recorder.record_failure(server_round, stage, msg.metadata.src_node_id, str(error))
        if len(verified) < self.min_sites:
            raise TooFewSites(
                f"round {server_round}: only {len(verified)} site(s) completed {stage} "
                f"(minimum {self.min_sites}); stopping the run"
            )
        return verified

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        verified = self._sort_replies(server_round, replies, "train")
        self._trained_nodes = [msg.metadata.src_node_id for _, msg in verified]
        for site, msg in verified:
            self.recorder.record_train(server_round, site, scalars(msg.content[Key.METRICS]))
            record_ledger(self.recorder, self.registry, site, list(msg.content[Key.SITE][Key.LEDGER]))
        self.recorder.finish_train(server_round)
        if not self.secure:
            return aggregate_arrayrecords([msg.content for _, msg in verified], self.weighted_by_key), None
        return self._secure_aggregate(server_round, verified), None

    def _secure_aggregate(self, server_round: int, verified: list[tuple[str, Message]]) -> ArrayRecord | None:
        """The masked sum of the sites' updates; None (the model stays) if the round is abandoned."""
        nodes = {site: msg.metadata.src_node_id for site, msg in verified}

        def refused(site: str, step: str, reason: str) -> None:
            self.recorder.record_failure(server_round, f"secure-aggregation {step}", nodes[site], reason)

        try:
            result = secure_aggregate(
                self._grid, server_round=server_round, nodes=nodes, global_arrays=self._global,
                adverts={site: bytes(msg.content[RECORD][Field.ADVERT]) for site, msg in verified},
                manifest=self.registry.keys, on_refusal=refused, min_sites=self.min_sites,
            )
        except RoundAbandoned as error:
            log.warning("%s", error)
            self.recorder.record_secure_aggregation(server_round, abandoned=str(error))
            return None
        self.recorder.record_secure_aggregation(
            server_round, sites=result.sites, dropped=result.dropped,
            threshold=result.threshold, seconds=round(result.seconds, 3),
        )
        return result.arrays

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        verified = self._sort_replies(server_round, replies, "evaluate")
        for site, msg in verified:
            metrics = msg.content[Key.METRICS]
            release = [float(v) for v in metrics[Key.RELEASE]] if Key.RELEASE in metrics else []
            self.recorder.record_evaluate(
                server_round, site, scalars(metrics), release, node_id=msg.metadata.src_node_id,
            )
        self.recorder.finish_evaluate(server_round)
        pooled = self.recorder.pooled_metric()
        return MetricRecord({f"pooled-{self.recorder.metric}": pooled}) if pooled is not None else None


def run_federation(grid: Grid, context: Context) -> None:
    """The ServerApp's work: train, evaluate every round, write the run folder."""
    grid = PromptGrid(grid)
    config = load_config(str(context.run_config[Key.CONFIG_PATH]))
    out_dir = Path(str(context.run_config[Key.OUT_DIR]))
    recorder = RunRecorder(out_dir, config)
    manifest_path = Path(str(context.run_config.get(Key.MANIFEST_PATH) or config.state_root / MANIFEST_FILE))
    kind = str(context.run_config.get(Key.RUN_KIND) or SIMULATION)
    recorder.set_run(run_id=str(grid.run.run_id), manifest=manifest_path, kind=kind)
    baselines_dir = str(context.run_config.get(Key.BASELINES_DIR) or "")
    status, reason, arrays = "completed", None, None
    try:
        registry = SiteRegistry(load_manifest(manifest_path), config.data.sites)
        trained = train_federation(grid, config, recorder, registry=registry)
        arrays = trained.arrays
        save_model(out_dir / MODEL_FILE, config, arrays)
        cross_site_evaluation(
            grid, config, recorder, registry=registry, global_arrays=arrays, initial_arrays=trained.initial,
            baselines=load_baselines(Path(baselines_dir) if baselines_dir else None),
        )
    except FedmedError as error:  # too few sites, or no key manifest to tell sites apart
        status, reason = "stopped", str(error)
        log.warning("%s", reason)
    recorder.write(status=status, reason=reason)


@dataclass(frozen=True)
class TrainedFederation:
    arrays: ArrayRecord
    """The global model after the last round."""
    initial: ArrayRecord
    """The weights every site started from; local-only models start from them too."""


def train_federation(
    grid: Grid, config: ExperimentConfig, recorder: RunRecorder, *, registry: SiteRegistry
) -> TrainedFederation:
    torch.manual_seed(config.training.seed)  # the initial model is public: every site receives it
    model = create_model(config.model.name, spec=config.data, outputs=create_task(config.task).outputs)
    strategy = SiteTrackingFedAvg(
        recorder, min_sites=config.min_sites, registry=registry, secure=config.secure_aggregation.enabled,
    )
    initial = ArrayRecord(float_state(model))
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.training.rounds,
        train_config=encode_plan(config),
        evaluate_config=encode_plan(config),
    )
    # Flower leaves ``result.arrays`` empty when no round produced a model (all abandoned).
    arrays = result.arrays if len(result.arrays) else initial
    return TrainedFederation(arrays=arrays, initial=initial)


def save_model(path: Path, config: ExperimentConfig, arrays: ArrayRecord) -> None:
    """Save the global model with what is needed to rebuild it."""
    torch.save(
        {
            "fedmed_version": __version__,
            "model": config.model.name,
            "task": config.task.model_dump(mode="json"),
            "input": config.data.input_only().model_dump(mode="json"),
            "state_dict": state_from_arrays(arrays),
        },
        path,
    )
