"""A hospital's ``flwr-clientapp``: Flower's, with code approval before any bundle code runs.

A SuperNode hands every message to a fresh ``flwr-clientapp`` process, which pulls the
app bundle (FAB) the server sent, installs it and imports its ClientApp. A check inside
the ClientApp comes too late: by then the bundle's code runs, and could skip the check.
``fedmed node start`` therefore puts this program first on the SuperNode's ``PATH`` under
Flower's name. It runs Flower's own ``flwr-clientapp``, with one step added between
receiving the bundle and installing it: the bundle's digest, with the installed fedmed's,
must be in the hospital's ``approved_code``. Otherwise the process refuses with the
reason, which Flower returns to the server as the message's error, and nothing of the
bundle is written to disk or imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmed.config import load_site_policy
from fedmed.federation.runtime import die_with_parent
from fedmed.secure.approval import check_code_approval, fab_digest

POLICY_ENV = "FEDMED_SITE_POLICY"
"""The hospital's policy file, set by ``fedmed node start`` in the SuperNode's environment."""
SITE_ENV = "FEDMED_SITE_ID"
COMMAND = "flwr-clientapp"


def check_bundle(fab: bytes, *, policy_path: Path, site: str) -> None:
    """Refuse a bundle the hospital has not approved (a real site: no approved_code approves nothing).

    Raises:
        PrivacyError: the bundle with the installed fedmed is not in approved_code.
        ConfigError: the policy cannot be read.
    """
    policy = load_site_policy(policy_path, check_models=False)
    check_code_approval(policy, site=site, simulated=False, digest=fab_digest(fab))


def approving(install: Callable[..., Any], *, policy_path: Path, site: str) -> Callable[..., Any]:
    """Flower's ``install_from_fab``, preceded by :func:`check_bundle`."""

    def install_approved(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Any:
        fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        check_bundle(fab, policy_path=policy_path, site=site)
        return install(fab_file, *args, **kwargs)

    return install_approved


def main() -> None:
    """Run Flower's ``flwr-clientapp`` with the approval step (arguments as Flower's)."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp

    die_with_parent()  # and Flower's own watch on its parent, besides
    policy, site = os.environ.get(POLICY_ENV), os.environ.get(SITE_ENV)
    if not policy or not site:
        raise SystemExit(f"{COMMAND} (fedmed): {POLICY_ENV} and {SITE_ENV} must name the site's policy and id")
    run_clientapp.install_from_fab = approving(run_clientapp.install_from_fab, policy_path=Path(policy), site=site)
    flwr_clientapp()


if __name__ == "__main__":
    main()
