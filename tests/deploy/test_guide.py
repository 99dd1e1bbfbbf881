"""The deployment guide's trial, run as written: docs/deployment.md's own block, from an empty folder.

The block is read from the guide, so guide and code cannot drift apart. One thing is
changed: the SuperLink's port, to a free one, so that the test never meets another
process on 9092.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from fedmed.federation.runtime import free_port
from tests.deploy.processes import flower_processes

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
SECTION = "## Try it on one machine"


def trial_block() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def test_the_guides_trial_runs_as_written_to_an_audited_run(tmp_path: Path) -> None:
    block = trial_block()
    assert "--port 9092" in block
    script = block.replace("--port 9092", f"--port {free_port()}")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    trial = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = trial.communicate(timeout=1200)
    finally:
        if trial.poll() is None:
            os.killpg(trial.pid, signal.SIGKILL)
    folder = tmp_path / "fedmed-trial"
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))
    assert trial.returncode == 0, output[-6000:] + logs
    results = json.loads((folder / "runs" / "first" / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "completed" and results["kind"] == "deployment"
    assert all(r["secure_aggregation"]["sites"] == ["site-a", "site-b", "site-c"] for r in results["rounds"])
    assert "PASS: 3 of 3 site ledgers pass" in output
    assert (folder / "runs" / "first" / "report.html").is_file()
    site_log = (folder / "site-a.log").read_text(encoding="utf-8")
    assert "epsilon 0.000 of 10 spent" in site_log and "that still fit:" in site_log
    assert flower_processes(folder) == []  # `kill` (SIGTERM) stopped every party and what it started
