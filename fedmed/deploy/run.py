"""`fedmed run`: submit an experiment to the consortium's SuperLink and follow it.

Run it on the SuperLink's machine: the ServerApp runs there and writes the run folder
(results.json, model, ledgers) where ``--out`` says, as ``fedmed simulate`` does.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmed.config import ExperimentConfig
from fedmed.deploy.provision import Consortium
from fedmed.errors import ConfigError
from fedmed.federation.messages import DEPLOYMENT, Key
from fedmed.federation.recorder import PROGRESS_FILE, clear_run_folder, read_results
from fedmed.federation.runtime import FlowerConnection, RunStatus, flower_environment, wait_healthy
from fedmed.federation.simulation import ProgressFollower

SUPERLINK_WAIT = 60.0
"""Seconds `fedmed run` waits for the SuperLink to answer before giving up."""


def run_on_consortium(
    config: ExperimentConfig, config_path: Path, out_dir: Path, consortium: Consortium,
    *, on_event: Callable[[dict[str, Any]], None],
) -> tuple[RunStatus, dict[str, Any] | None]:
    """Submit the app with ``flwr run`` over TLS; return Flower's status and the results.

    Raises:
        ConfigError: the experiment names sites the consortium does not have.
    """
    unknown = sorted(set(config.data.sites) - set(consortium.sites()))
    if unknown:
        raise ConfigError(
            f"{config_path}: data.sites names {', '.join(unknown)}, not in the consortium "
            f"{consortium.root} ({', '.join(consortium.sites())})"
        )
    wait_healthy(  # a run submitted while the SuperLink is still starting would be refused
        None, f"https://{consortium.address()}/health", log_path=None, timeout=SUPERLINK_WAIT,
        context=ssl.create_default_context(cafile=str(consortium.ca_cert)),
    )
    clear_run_folder(out_dir)
    home = Path(tempfile.mkdtemp(prefix="fedmed-flwr-"))
    try:
        connection = FlowerConnection(
            home, flower_environment(home), consortium.address(), root_certificates=consortium.ca_cert
        )
        status = connection.run(
            run_config={
                Key.CONFIG_PATH: str(config_path.resolve()),
                Key.OUT_DIR: str(out_dir.resolve()),
                Key.MANIFEST_PATH: str(consortium.manifest.resolve()),
                Key.RUN_KIND: DEPLOYMENT,
            },
            log_path=out_dir / "flower.log",
            poll=ProgressFollower(out_dir / PROGRESS_FILE, on_event),
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return status, read_results(out_dir)
