"""The Flower programs a SuperLink or SuperNode starts by name, wrapped by fedmed.

Flower's processes start one another by name from ``PATH``: the SuperNode starts
``flower-superexec``, which starts a ``flwr-clientapp`` per message. fedmed puts a private
``bin`` folder first on that ``PATH`` with two small scripts:

- ``flower-superexec`` runs Flower's own after asking Linux to stop it when its parent
  dies. Flower's own watch on its parent misses a parent that nobody reaps (a zombie
  keeps its pid), and a SuperExec left behind would keep taking work.
- ``flwr-clientapp`` (SuperNodes only) is fedmed's code-approval guard,
  :mod:`fedmed.deploy.clientapp`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedmed.deploy import clientapp
from fedmed.federation.runtime import die_with_parent, flower_bin

SUPEREXEC = "flower-superexec"


def write_wrappers(bin_dir: Path, *, guard_clientapps: bool) -> Path:
    """Write the scripts into ``bin_dir`` (mode 0700); return it, to put first on PATH."""
    bin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    python = sys.executable
    scripts = {SUPEREXEC: f'exec "{python}" -m fedmed.deploy.wrappers "{flower_bin(SUPEREXEC)}" "$@"'}
    if guard_clientapps:
        scripts[clientapp.COMMAND] = f'exec "{python}" -m fedmed.deploy.clientapp "$@"'
    for name, line in scripts.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{line}\n", encoding="utf-8")
        script.chmod(0o700)
    return bin_dir


def main() -> None:
    """``python -m fedmed.deploy.wrappers PROGRAM ARGS...``: run PROGRAM, to die with its parent."""
    program, *arguments = sys.argv[1:]
    die_with_parent()
    os.execv(program, [program, *arguments])


if __name__ == "__main__":
    main()
