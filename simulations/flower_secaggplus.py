"""What Flower's own SecAgg+ adds to one FedAvg round: the reference for our benchmark.

Our secure aggregation is benchmarked against the protocol Flower ships, so this module
times that protocol as Flower users run it: the legacy API only (``DefaultWorkflow`` with
``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` and a ``NumPyClient`` on the
clients), on a complete graph (every site holds a share of every other site's secrets)
so it compares with a complete-graph protocol. Rounds run in process through
``LoopbackGrid``: real protobuf serialisation both ways, no engine, no network, and the
sites run one after another, so a round's time is the sum of all sites' work plus the
server's. Clients do no training, which leaves only the protocol's cost in the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from statistics import median
from time import perf_counter
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import NDArrays, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from fedmed.federation.loopback import LoopbackGrid

NUM_EXAMPLES = 100
NOISE_SCALE = 1e-3  # far above the check's tolerance: a round that skips aggregation fails it
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


class _TimedGrid(LoopbackGrid):
    """A LoopbackGrid that adds up the seconds spent delivering messages.

    That is the sites' ClientApps plus the protobuf round trips; the rest of a round is
    the server's own work.
    """

    seconds: float = 0.0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        start = perf_counter()
        try:
            return list(super().push_messages(messages))
        finally:
            self.seconds += perf_counter() - start


Stage = Callable[[_TimedGrid, LegacyContext, WorkflowState], bool]


class _TimedSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ on the complete graph with a majority threshold, timing each stage."""

    def __init__(self, n_sites: int) -> None:
        super().__init__(num_shares=n_sites, reconstruction_threshold=n_sites // 2 + 1)
        self.seconds: dict[str, float] = {}
        for stage in STAGES:
            setattr(self, f"{stage}_stage", self._timed(stage, getattr(self, f"{stage}_stage")))

    def _timed(self, stage: str, run_stage: Stage) -> Stage:
        def timed(grid: _TimedGrid, context: LegacyContext, state: WorkflowState) -> bool:
            grid_before, start = grid.seconds, perf_counter()
            done = run_stage(grid, context, state)
            self.seconds[f"{stage}_s"] = perf_counter() - start
            self.seconds[f"{stage}_grid_s"] = grid.seconds - grid_before
            return done

        return timed

    def tolerance(self) -> float:
        """Error allowed on the mean: two quantization steps, divided by a site's weight."""
        step = 2 * self.clipping_range / self.quantization_range
        return 2 * step * self.max_weight / NUM_EXAMPLES


def _noise(seed: int, node_id: int, n_params: int) -> np.ndarray:
    rng = np.random.default_rng([seed, node_id])
    return rng.standard_normal(n_params, dtype=np.float32) * NOISE_SCALE


def _expected(initial: np.ndarray, n_sites: int, seed: int) -> np.ndarray:
    updates = [initial + _noise(seed, node, initial.size) for node in range(1, n_sites + 1)]
    return np.mean(updates, axis=0, dtype=np.float64)


class _EchoClient(NumPyClient):
    """Returns what it received plus its own fixed noise, as if it had trained."""

    def __init__(self, seed: int, node_id: int) -> None:
        self.seed, self.node_id = seed, node_id

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> tuple[NDArrays, int, dict]:
        (array,) = parameters
        return [array + _noise(self.seed, self.node_id, array.size)], NUM_EXAMPLES, {}


def _client_app(seed: int, secure: bool) -> ClientApp:
    def client_fn(context: Context) -> Client:
        return _EchoClient(seed, context.node_id).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


def _run_round(
    n_sites: int, initial: np.ndarray, seed: int, secure: _TimedSecAggPlus | None
) -> tuple[float, float, NDArrays]:
    """One round through a fresh grid: its seconds, the grid's part of them, the new model."""
    nodes = {node: {} for node in range(1, n_sites + 1)}
    grid = _TimedGrid(_client_app(seed, secure is not None), nodes, run_config={})
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_fit_clients=n_sites,
        min_available_clients=n_sites,
        initial_parameters=ndarrays_to_parameters([initial]),
        fit_metrics_aggregation_fn=lambda _: {},  # FedAvg warns without one
    )
    context = LegacyContext(grid.server_context, config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=secure)
    start = perf_counter()
    workflow(grid, context)
    seconds = perf_counter() - start
    return seconds, grid.seconds, context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()


def _check(model: NDArrays, expected: np.ndarray, tolerance: float, label: str) -> None:
    if len(model) != 1 or model[0].shape != expected.shape:
        shapes = [array.shape for array in model]
        raise RuntimeError(f"{label} round returned arrays of shapes {shapes}, not [{expected.shape}]")
    error = float(np.max(np.abs(model[0] - expected)))
    if error > tolerance:
        raise RuntimeError(f"{label} round is off the clients' mean by {error:.3g} (allowed {tolerance:.3g})")


def _round_pair(n_sites: int, initial: np.ndarray, seed: int) -> dict[str, float]:
    """A plain and a SecAgg+ round from the same model, both checked: their seconds."""
    secure = _TimedSecAggPlus(n_sites)
    plain_s, plain_grid_s, plain_model = _run_round(n_sites, initial, seed, None)
    secure_s, _, secure_model = _run_round(n_sites, initial, seed, secure)
    expected = _expected(initial, n_sites, seed)
    _check(plain_model, expected, secure.tolerance(), "plain")
    _check(secure_model, expected, secure.tolerance(), "SecAgg+")
    return {"plain_s": plain_s, "secure_s": secure_s, "plain_grid_s": plain_grid_s} | secure.seconds


def secaggplus_round_seconds(n_sites: int, n_params: int, *, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Seconds of one FedAvg round without and with Flower's SecAgg+, through LoopbackGrid.

    The model is one float32 array of ``n_params`` values; each of the ``n_sites`` clients
    returns it plus small fixed noise with ``num_examples = 100``. Each repeat runs a plain
    round (``DefaultWorkflow()``) and a secure one (``DefaultWorkflow(fit_workflow=
    SecAggPlusWorkflow(num_shares=n_sites, reconstruction_threshold=n_sites // 2 + 1))``,
    Flower's default clipping, quantization and modulus) on fresh grids, after an untimed
    warm-up pair on a model of 1000 values. Every round's model is checked against the
    clients' mean; one that misses it by more than two quantization steps (divided by a
    site's weight ``num_examples / max_weight``) raises RuntimeError.

    Returns medians over the repeats, in seconds: ``plain_s``, ``secure_s``, ``added_s``
    (``secure_s - plain_s``), ``plain_grid_s`` (the plain round's time inside the grid:
    the sites' ClientApps plus serialisation), and for each SecAgg+ stage (setup,
    share_keys, collect_masked_vectors, unmask) ``<stage>_s`` and ``<stage>_grid_s``.
    The clients' fit runs in collect_masked_vectors.
    """
    if n_sites < 3:
        raise ValueError("SecAgg+ on the complete graph needs at least 3 sites")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    initial = np.random.default_rng(seed).uniform(-1.0, 1.0, n_params).astype(np.float32)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        _round_pair(n_sites, initial[:1000], seed)
        samples = [_round_pair(n_sites, initial, seed) for _ in range(repeats)]
    finally:
        flwr_logger.setLevel(level)
    result = {key: median(sample[key] for sample in samples) for key in samples[0]}
    return {"added_s": result["secure_s"] - result["plain_s"]} | result


def _main() -> None:
    print(
        f"{'sites':>5} {'params':>9} {'plain s':>8} {'secure s':>9} {'added s':>8} {'wall s':>7}"
        "  SecAgg+ stages: s (of which in the grid)"
    )
    for sites, params in ((3, 1_000_000), (10, 1_000_000)):
        start = perf_counter()
        result = secaggplus_round_seconds(sites, params, repeats=1)
        wall = perf_counter() - start
        stages = ", ".join(f"{stage} {result[f'{stage}_s']:.3f} ({result[f'{stage}_grid_s']:.3f})" for stage in STAGES)
        print(
            f"{sites:>5} {params:>9} {result['plain_s']:>8.2f} {result['secure_s']:>9.2f}"
            f" {result['added_s']:>8.2f} {wall:>7.1f}  {stages}"
        )


if __name__ == "__main__":
    _main()
