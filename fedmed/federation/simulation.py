"""A whole simulated federation on one machine: data ready, engine up, run followed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmed.config import ExperimentConfig
from fedmed.data.demo import synthesize_demo
from fedmed.data.synth import site_names
from fedmed.errors import DataError
from fedmed.federation.baselines import train_baselines
from fedmed.federation.consortium_keys import prepare_site_keys
from fedmed.federation.messages import Key
from fedmed.federation.recorder import PROGRESS_FILE, clear_run_folder, read_results
from fedmed.federation.runtime import RunStatus, SimulationEngine


def prepare_site_folders(config: ExperimentConfig, *, announce: Callable[[str], None]) -> None:
    """Check every site has a folder; write the demo hospitals first if the config asks.

    Raises:
        DataError: a site folder is missing (names the folder and the fix).
    """
    data = config.data
    if not data.root.exists() and data.synthesize is not None:
        demo_names = site_names(len(data.sites))
        if list(data.sites) != demo_names:
            raise DataError(
                f"data.synthesize writes sites named {', '.join(demo_names)}, but data.sites "
                f"lists {', '.join(data.sites)}; use those names or remove data.synthesize"
            )
        announce(f"writing demo hospitals to {data.root} (data.synthesize)")
        synthesize_demo(data.root, data.synthesize, n_sites=len(data.sites), names=config.task.names)
    if not data.root.is_dir():
        raise DataError(
            f"data.root {data.root} does not exist; create it with one folder per site, or "
            "add a data.synthesize section to generate demo hospitals"
        )
    missing = [site for site in data.sites if not (data.root / site).is_dir()]
    if missing:
        raise DataError(
            f"no folder for site(s) {', '.join(missing)} under {data.root}; each site in "
            "data.sites needs a folder of DICOM files with a labels.csv"
        )


class ProgressFollower:
    """Reads new events from a run's progress.jsonl and hands them to a callback."""

    def __init__(self, path: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_event = on_event
        self._offset = 0

    def __call__(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self._offset)
            while line := handle.readline():
                if not line.endswith("\n"):
                    break  # half-written: read it next time
                self._offset += len(line.encode("utf-8"))
                self.on_event(json.loads(line))


def simulate(
    config: ExperimentConfig,
    config_path: Path,
    out_dir: Path,
    *,
    on_event: Callable[[dict[str, Any]], None],
    announce: Callable[[str], None],
) -> tuple[RunStatus, dict[str, Any] | None]:
    """Run the federation in Flower's simulation engine; return its status and results."""
    prepare_site_folders(config, announce=announce)
    prepare_site_keys(config)
    clear_run_folder(out_dir)
    threads = str(config.simulation.cpus_per_site)
    engine = SimulationEngine(
        out_dir, env_extra={"FEDMED_TORCH_THREADS": threads, "OMP_NUM_THREADS": threads}
    )
    with engine:
        baselines = train_baselines(config, out_dir, engine, announce=announce)
        announce(f"Flower simulation engine: {len(config.data.sites)} virtual SuperNodes")
        run_config = {Key.CONFIG_PATH: str(config_path.resolve()), Key.OUT_DIR: str(out_dir.resolve())}
        if baselines is not None:
            run_config[Key.BASELINES_DIR] = str(baselines.resolve())
        status = engine.run(
            run_config=run_config,
            num_supernodes=len(config.data.sites),
            cpus_per_node=config.simulation.cpus_per_site,
            gpus_per_node=config.simulation.gpus_per_site,
            poll=ProgressFollower(out_dir / PROGRESS_FILE, on_event),
        )
    return status, read_results(out_dir)
