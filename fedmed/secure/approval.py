"""Code approval: a site trains only with code its hospital has reviewed.

A hospital approves code by listing its digest under ``approved_code`` in its site
policy. The digest covers what runs at the site: every ``*.py`` file of the installed
``fedmed`` package and the Flower app (its ``pyproject.toml`` and the ``*.py`` files of
``server/`` and ``client/``). Paths enter the hash relative to their root, so the same
code has the same digest on every machine. ``pyproject.toml`` enters as its parsed
content, because ``flwr run`` rewrites the file when it bundles the app (comments and
layout are dropped, ``[tool.flwr.federations]`` removed): the hospital reviewing the
source and the node running the bundle must agree.

What this does not protect against: a malicious app bundle. Flower 1.42's SuperNode
runs whatever bundle the SuperLink sends, and that bundle could simply skip the check.
The check stops a site from training with code its hospital has not reviewed when the
coordinator honestly ships a new version; it pairs with pinning the installed fedmed
version at the hospital, which is most of the code that runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import fedmed
from fedmed.config import SitePolicy
from fedmed.errors import FedmedError, PrivacyError
from fedmed.federation.runtime import APP_FILES, project_root


def running_app_dir() -> Path:
    """The Flower app this process runs: where ``client.app`` was imported from.

    A SuperNode puts the installed app bundle first on ``sys.path`` and imports the
    ClientApp from it; anywhere else (the CLI, a test bench) it is the source checkout.
    """
    module = sys.modules.get("client.app")
    file = getattr(module, "__file__", None)
    if file:
        return Path(file).resolve().parents[1]
    return project_root()


def code_digest(app_dir: Path | None = None, *, package_dir: Path | None = None) -> str:
    """``"sha256:<hex>"`` over the fedmed package and the Flower app that run here.

    Reads about sixty small files (a few milliseconds), so it is computed afresh each
    round: a cache would hide code installed while the process runs.

    Args:
        app_dir: the Flower app (``pyproject.toml``, ``server/``, ``client/``);
            default: the one running here (:func:`running_app_dir`).
        package_dir: the ``fedmed`` package folder; default: the installed one.

    Raises:
        FedmedError: ``app_dir`` is not a Flower app.
    """
    app = Path(app_dir) if app_dir is not None else running_app_dir()
    package = Path(package_dir) if package_dir is not None else Path(fedmed.__file__).parent
    digest = hashlib.sha256()
    entries = sorted([*_python_files(package, "fedmed"), *_app_files(app)])
    for name, content in entries:
        # name and length first, so no two different file sets hash the same bytes
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return f"sha256:{digest.hexdigest()}"


def check_code_approval(policy: SitePolicy, *, site: str, simulated: bool, app_dir: Path | None = None) -> None:
    """Refuse to train with code the hospital has not approved.

    A real hospital's policy must list the code it approved (fail closed); a simulated
    site checks only when its policy lists some.

    Raises:
        PrivacyError: the policy approves no code, or not the code running here.
    """
    if policy.approved_code is None and simulated:
        return
    digest = code_digest(app_dir)
    if policy.approved_code is None:
        raise PrivacyError(
            f"site {site} has approved no code: its policy has no approved_code, and the code here is {digest}; "
            f"after reviewing this code, add `approved_code: [\"{digest}\"]` to the policy "
            "(`fedmed code-digest` prints it); refusing to run it"
        )
    if digest not in policy.approved_code:
        raise PrivacyError(
            f"site {site} refuses to run: the hospital has not approved this code ({digest} is not in the "
            "policy's approved_code); review the new version and add its digest, or run the approved one"
        )


def _python_files(root: Path, label: str) -> Iterator[tuple[str, bytes]]:
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if "__pycache__" not in relative.parts and path.is_file():
            yield f"{label}/{relative.as_posix()}", path.read_bytes()


def _app_files(app: Path) -> Iterator[tuple[str, bytes]]:
    pyproject = app / "pyproject.toml"
    if not pyproject.is_file() or not (app / "client").is_dir():
        raise FedmedError(f"{app}: not a Flower app (no pyproject.toml and client/ here)")
    try:
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise FedmedError(f"{pyproject}: cannot be read as TOML: {error}") from None
    config.get("tool", {}).get("flwr", {}).pop("federations", None)  # as `flwr run` bundles it
    yield "app/pyproject.toml", json.dumps(config, sort_keys=True, default=str).encode()
    for package in APP_FILES:  # what `stage_app` bundles; pyproject.toml is hashed above
        if (app / package).is_dir():
            yield from _python_files(app / package, f"app/{package}")
