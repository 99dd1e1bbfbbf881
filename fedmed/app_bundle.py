"""The Flower app bundle (FAB): which files of the checkout make up fedmed's Flower app.

It lives at the top of the package, beside ``errors.py``, because two layers need the same
answer: ``fedmed.federation.runtime`` stages these files for ``flwr run`` to ship, and
``fedmed.secure.approval`` hashes the bundle built from them so that a hospital approves
exactly what its node receives. ``secure/`` sits below ``federation/``, so the staging
cannot live in ``federation/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedmed.errors import FedmedError

APP_FILES = ("pyproject.toml", "server", "client")
"""What the app bundle holds; fedmed itself is imported from the installed package."""


class AppBundleError(FedmedError):
    """The Flower app's source (server/, client/ next to fedmed/) cannot be found."""


def project_root() -> Path:
    """The checkout holding server/ and client/ next to fedmed/.

    Raises:
        AppBundleError: fedmed is not installed from its source checkout.
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "server" / "app.py").is_file() or not (root / "client" / "app.py").is_file():
        raise AppBundleError(
            f"{root}: no server/app.py and client/app.py here; install fedmed from its source "
            "checkout with `pip install -e .` so the Flower apps can be found"
        )
    return root


def stage_app(destination: Path, *, root: Path | None = None) -> Path:
    """Copy only the Flower app (pyproject, server/, client/) into ``destination``.

    Bundling the checkout itself would walk a virtualenv's tens of thousands of files
    on every run, and a bundled fedmed/ would shadow the installed one. ``root``: the
    app's source folder (default: this checkout).
    """
    root = project_root() if root is None else Path(root)
    shutil.rmtree(destination, ignore_errors=True)  # a previous run's copy
    destination.mkdir(parents=True)
    for name in APP_FILES:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination
