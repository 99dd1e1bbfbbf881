"""Code approval: a site runs only code its hospital has reviewed.

A hospital approves code by listing its digest under ``approved_code`` in its site
policy. The digest covers everything that runs at the site: every ``*.py`` file of the
installed ``fedmed`` package, and every file of the Flower app bundle (FAB) as Flower
ships it: ``pyproject.toml`` as the build rewrites it, ``server/``, ``client/``, and
anything else the bundle holds, since a module in the bundle named like a dependency
(``numpy.py``, a compiled ``torch`` extension, a stale ``__pycache__``) would shadow it.
Paths enter the hash relative to their root, so the same code has the same digest on
every machine.

The hospital reviews source; the node sees a bundle. :func:`code_digest` of a source app
builds the bundle ``flwr run`` would build from it (Flower's own builder, byte for byte
the same files) and hashes that, so the two agree.

Where it is checked: in deployment, before any bundle code is imported: ``fedmed node
start`` makes each ClientApp process fedmed's guard (:mod:`fedmed.deploy.clientapp`),
which hashes the FAB the SuperNode received (:func:`fab_digest`) and refuses before
installing it. Every message type then checks again in the ClientApp, on the installed
bundle. In simulation that second check is the only one, after Flower imported the app:
the researcher runs their own code there.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import fedmed
from fedmed.app_bundle import project_root, stage_app
from fedmed.config import SitePolicy
from fedmed.errors import FedmedError, PrivacyError

BUNDLE_METADATA = ".info/"
"""The FAB's own manifest of file hashes, written by the build and removed at install."""


def running_app_dir() -> Path | None:
    """The installed app bundle this process runs, or None when it runs the source checkout.

    A SuperNode (and the simulation engine) puts the installed bundle first on
    ``sys.path`` and imports the ClientApp from it; the CLI and test benches import the
    checkout's ``client/``.
    """
    module = sys.modules.get("client.app")
    file = getattr(module, "__file__", None)
    if not file:
        return None
    app = Path(file).resolve().parents[1]
    try:
        return None if app == project_root() else app
    except FedmedError:  # fedmed installed without its checkout: the app is a bundle
        return app


def code_digest(app_dir: Path | None = None, *, package_dir: Path | None = None) -> str:
    """``"sha256:<hex>"`` over the fedmed package and a Flower app's bundle.

    Reads about sixty small files (milliseconds; a source app's bundle is built first,
    tens of milliseconds), so it is computed afresh each time: a cache would hide code
    installed while the process runs.

    Args:
        app_dir: a Flower app's source folder (``pyproject.toml``, ``server/``,
            ``client/``): hashed as the bundle ``flwr run`` builds from it. Default: the
            app running here, the installed bundle as it is on disk.
        package_dir: the ``fedmed`` package folder; default: the installed one.

    Raises:
        FedmedError: ``app_dir`` is not a Flower app.
    """
    if app_dir is not None:
        files = source_bundle_files(Path(app_dir))
    else:
        installed = running_app_dir()
        files = installed_bundle_files(installed) if installed is not None else source_bundle_files(project_root())
    return _digest(package_dir, files)


def fab_digest(fab: bytes, *, package_dir: Path | None = None) -> str:
    """The digest of the installed fedmed with a FAB as Flower ships it: every file in the archive.

    Raises:
        FedmedError: ``fab`` is not a zip archive.
    """
    return _digest(package_dir, fab_files(fab))


def fab_files(fab: bytes) -> dict[str, bytes]:
    """Every file of a FAB but Flower's own hash list, by path."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            return {
                info.filename: archive.read(info)
                for info in archive.infolist()
                if not info.is_dir() and not info.filename.startswith(BUNDLE_METADATA)
            }
    except (zipfile.BadZipFile, ValueError) as error:
        raise FedmedError(f"the app bundle is not a valid FAB archive ({error})") from None


def installed_bundle_files(app: Path) -> dict[str, bytes]:
    """Every file of an installed bundle, by path; ``__pycache__`` left out (Python writes it there)."""
    return {
        path.relative_to(app).as_posix(): path.read_bytes()
        for path in sorted(app.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(app).parts
    }


def source_bundle_files(app: Path) -> dict[str, bytes]:
    """The files of the FAB ``flwr run`` builds from a source app (what ``stage_app`` bundles).

    Raises:
        FedmedError: ``app`` is not a Flower app.
    """
    from flwr.cli.build import build_fab_from_disk  # Flower's CLI: only where a bundle is built

    if not (app / "pyproject.toml").is_file() or not (app / "client").is_dir():
        raise FedmedError(f"{app}: not a Flower app (no pyproject.toml and client/ here)")
    with tempfile.TemporaryDirectory(prefix="fedmed-bundle-") as scratch:
        staged = stage_app(Path(scratch) / "app", root=app)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # pathspec, inside Flower's builder
                fab = build_fab_from_disk(staged)
        except (ValueError, OSError) as error:
            raise FedmedError(f"{app}: Flower cannot build this app into a bundle ({error})") from None
    return fab_files(fab)


def _digest(package_dir: Path | None, bundle: Mapping[str, bytes]) -> str:
    package = Path(package_dir) if package_dir is not None else Path(fedmed.__file__).parent
    digest = hashlib.sha256(b"fedmed-code-v2\0")
    entries = sorted([*_python_files(package, "fedmed"), *((f"app/{name}", data) for name, data in bundle.items())])
    for name, content in entries:
        # name and length first, so no two different file sets hash the same bytes
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return f"sha256:{digest.hexdigest()}"


def check_code_approval(policy: SitePolicy, *, site: str, simulated: bool, digest: str | None = None) -> None:
    """Refuse to run code the hospital has not approved.

    A real hospital's policy must list the code it approved (fail closed); a simulated
    site checks only when its policy lists some. ``digest`` is the code's (default: the
    code running here, :func:`code_digest`).

    Raises:
        PrivacyError: the policy approves no code, or not this code.
    """
    if policy.approved_code is None and simulated:
        return
    digest = digest or code_digest()
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
