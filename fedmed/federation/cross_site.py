"""The end of a run: every model evaluated at every site, as in NVIDIA FLARE's cross-site validation.

After the last round the server asks each site, when the run config says so, for a model
trained on its data alone (``train.local_model``), then sends every model it holds (the
global one, the local ones, and in simulation the baselines) to every site in one
``evaluate.cross_site`` message. Each site answers with aggregate metrics per model and
its subgroup analysis of the global model; cells with too few patients never leave it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedmed.config import ExperimentConfig
from fedmed.federation.identity import SiteRegistry, UnverifiedSite
from fedmed.federation.ledgers import record_ledger
from fedmed.federation.messages import (
    CROSS_SITE_ACTION,
    GLOBAL_MODEL,
    LOCAL_MODEL_ACTION,
    MODEL_PREFIX,
    Key,
    encode_plan,
    local_model_id,
    scalars,
)
from fedmed.federation.recorder import RunRecorder

log = logging.getLogger("fedmed.server")


def cross_site_evaluation(
    grid: Grid,
    config: ExperimentConfig,
    recorder: RunRecorder,
    *,
    registry: SiteRegistry,
    global_arrays: ArrayRecord,
    initial_arrays: ArrayRecord,
    baselines: Mapping[str, ArrayRecord],
) -> None:
    """Collect local models if configured, then have every site evaluate every model."""
    nodes = sorted(grid.get_node_ids())
    models = {GLOBAL_MODEL: global_arrays}
    if config.evaluation.local_models:
        models |= _collect_local_models(grid, config, recorder, registry, nodes=nodes, initial=initial_arrays)
    models |= baselines
    content = RecordDict({Key.CONFIG: encode_plan(config)})
    for model_id, arrays in models.items():
        content[MODEL_PREFIX + model_id] = arrays
    recorder.set_models(list(models))
    for reply in _ask_all(grid, nodes, f"evaluate.{CROSS_SITE_ACTION}", content):
        if reply.has_error():
            recorder.record_failure(None, "cross-site evaluation", reply.metadata.src_node_id, reply.error.reason or "")
            continue
        try:
            site = registry.identify(reply)
            report = json.loads(str(reply.content[Key.SITE][Key.EVALUATION]))
            recorder.record_cross_site(site, dict(report["models"]), dict(report["subgroups"]))
        except UnverifiedSite as error:
            recorder.record_failure(None, "cross-site evaluation", reply.metadata.src_node_id, str(error))
        except (KeyError, TypeError, ValueError) as error:  # a site running other code: its reply is skipped
            recorder.record_failure(
                None, "cross-site evaluation", reply.metadata.src_node_id, f"unreadable evaluation reply ({error!r})"
            )


def _collect_local_models(
    grid: Grid, config: ExperimentConfig, recorder: RunRecorder, registry: SiteRegistry, *,
    nodes: list[int], initial: ArrayRecord,
) -> dict[str, ArrayRecord]:
    """Each site's model trained on its own data alone, from the run's initial weights."""
    content = RecordDict({Key.CONFIG: encode_plan(config), Key.ARRAYS: initial})
    models = {}
    for reply in _ask_all(grid, nodes, f"train.{LOCAL_MODEL_ACTION}", content):
        if reply.has_error():
            node = reply.metadata.src_node_id
            reason = reply.error.reason or "no reason given"
            site = registry.node_sites.get(node)
            if site is not None:
                recorder.record_model_refused(local_model_id(site), reason)
            recorder.record_failure(None, "local model", node, reason)
            continue
        try:
            site = registry.identify(reply)
        except UnverifiedSite as error:
            recorder.record_failure(None, "local model", reply.metadata.src_node_id, str(error))
            continue
        record_ledger(recorder, registry, site, list(reply.content[Key.SITE][Key.LEDGER]))
        recorder.record_local_model(site, scalars(reply.content[Key.METRICS]))
        models[local_model_id(site)] = reply.content[Key.ARRAYS]
        log.info("site %s shared its local-only model", site)
    return dict(sorted(models.items()))


def _ask_all(grid: Grid, nodes: list[int], message_type: str, content: RecordDict) -> list[Message]:
    messages = [Message(content, node, message_type, group_id=message_type) for node in nodes]
    return list(grid.send_and_receive(messages))


def save_baseline(path: Path, model_id: str, state: dict[str, torch.Tensor]) -> None:
    """Keep a simulation baseline for the ServerApp to send round with the other models."""
    torch.save({"model_id": model_id, "state_dict": state}, path)


def load_baselines(folder: Path | None) -> dict[str, ArrayRecord]:
    """Simulation baselines (``*.pt``, as ``save_baseline`` writes them), keyed by model id."""
    if folder is None or not folder.is_dir():
        return {}
    models = {}
    for path in sorted(folder.glob("*.pt")):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        models[str(saved["model_id"])] = ArrayRecord(saved["state_dict"])
    return models
