"""One tiny federation run as a user runs it: ``fedmed simulate`` in a subprocess.

The per-task simulation tests differ in their hospitals, policy and experiment; writing
those files and running the command is the same for each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def simulate(
    folder: Path, experiment: dict[str, Any], *, policy: dict[str, Any], timeout: int = 900,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Write ``policy`` (every simulated hospital's) and ``experiment`` under ``folder``, run it.

    The hospitals' books go to ``folder/hospital-state``, Flower's cache to ``folder/cache``.
    Returns the finished command and its run folder, once it exited 0 without a traceback.
    """
    policy_path = folder / "site-policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    config = folder / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        **experiment,
        "simulation": {"site_policy": str(policy_path), "state_root": str(folder / "hospital-state")},
    }))
    out = folder / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedmed", "simulate", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "XDG_CACHE_HOME": str(folder / "cache")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done, out
