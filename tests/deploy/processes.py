"""Processes on this machine, for tests that must prove nothing of Flower outlives a stop."""

from __future__ import annotations

import os
from pathlib import Path


def flower_processes(marker: Path) -> list[str]:
    """Running Flower processes whose command line names ``marker`` (zombies excluded)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(marker) in command and state != "Z" and ("flower-" in command or "flwr" in command):
            found.append(command[:120])
    return found
