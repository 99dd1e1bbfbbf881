"""A site's Ed25519 identity: the key that signs its privacy ledger.

The private key stays on the site's disk (PKCS8 PEM, mode 0600); the public key (PEM beside
it, ``<name>.pub``) is what the site hands to the federation and to auditors. An auditor
should get it from the site itself, out of band, and compare fingerprints: a public key
shipped next to a ledger proves nothing to someone who could also have rewritten the ledger.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmed.errors import FedmedError

PUBLIC_SUFFIX = ".pub"


def public_key_path(path: Path) -> Path:
    """Where the public key of the signing key at ``path`` lives: ``path.with_suffix(".pub")``."""
    return Path(path).with_suffix(PUBLIC_SUFFIX)


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """Create a new Ed25519 key at ``path`` (mode 0600) and its public key beside it.

    The file is created with ``O_EXCL`` and mode 0600, so it is never readable by others,
    not even for a moment; a missing parent folder is created with mode 0700.

    Raises:
        FedmedError: a key already exists at ``path`` (it is never overwritten), or the
            file cannot be written.
    """
    path = Path(path)
    pub_path = public_key_path(path)
    if pub_path == path:
        raise FedmedError(
            f"{path}: a signing key file must not end in {PUBLIC_SUFFIX!r}; that name is for its public key"
        )
    key = Ed25519PrivateKey.generate()
    write_private_file(
        path, private_pem(key), what="signing key",
        exists_hint="the site's ledger is signed with it. Move it away first if you really mean to "
        "replace the site's identity",
    )
    try:
        pub_path.write_text(public_key_pem(key), encoding="ascii")
    except OSError as error:
        path.unlink(missing_ok=True)
        raise FedmedError(f"{pub_path}: cannot write the public key ({error.strerror})") from None
    return key


def private_pem(key: object) -> bytes:
    """An unencrypted PKCS8 PEM of any private key."""
    return key.private_bytes(  # type: ignore[attr-defined]
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def write_private_file(path: Path, data: bytes, *, what: str, exists_hint: str = "move it away first") -> None:
    """Write secret bytes to a new file, mode 0600 from the start (``O_EXCL``), fsynced.

    A missing parent folder is created with mode 0700.

    Raises:
        FedmedError: the file exists (it is never overwritten) or cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FedmedError(f"{path}: a {what} already exists; refusing to overwrite it ({exists_hint})") from None
    except OSError as error:
        raise FedmedError(f"{path}: cannot create the {what} ({error.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        path.unlink(missing_ok=True)
        raise FedmedError(f"{path}: cannot write the {what} ({error.strerror})") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the site's Ed25519 key from ``path``.

    Raises:
        FedmedError: the file is missing or unreadable, readable or writable by group or
            others (with the chmod fix), or not an unencrypted Ed25519 private key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FedmedError(f"{path}: signing key file does not exist") from None
    except OSError as error:
        raise FedmedError(f"{path}: cannot read the signing key ({error.strerror})") from None
    if os.name == "posix" and mode & 0o077:
        raise FedmedError(
            f"{path}: signing key is accessible by group or others (mode {mode & 0o777:03o}); "
            f"restrict it with `chmod 600 {path}` and check who could have copied it"
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FedmedError(f"{path}: cannot read the signing key ({error.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise FedmedError(
            f"{path}: signing key is encrypted; fedmed needs an unencrypted PKCS8 PEM key (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise FedmedError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FedmedError(f"{path}: signing key is {type(key).__name__}, not Ed25519")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``, created (with its public key) the first time."""
    path = Path(path)
    if path.exists():
        return load_signing_key(path)
    try:
        return generate_signing_key(path)
    except FedmedError:
        if path.exists():  # another process created it first
            return load_signing_key(path)
        raise


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    raise TypeError(f"expected an Ed25519 key, got {type(key).__name__}")


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half of ``key`` as SubjectPublicKeyInfo PEM text."""
    return (
        _public(key)
        .public_bytes(encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a PEM public key.

    Raises:
        FedmedError: the text is not a PEM Ed25519 public key.
    """
    data = pem.encode("utf-8", errors="replace") if isinstance(pem, str) else bytes(pem)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise FedmedError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FedmedError(f"public key is {type(key).__name__}, not Ed25519")
    return key


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key from ``path``.

    Raises:
        FedmedError: the file is missing, unreadable or not an Ed25519 public key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FedmedError(f"{path}: public key file does not exist") from None
    except OSError as error:
        raise FedmedError(f"{path}: cannot read the public key ({error.strerror})") from None
    try:
        return load_public_key(data)
    except FedmedError as error:
        raise FedmedError(f"{path}: {error}") from None


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw public key: for people to compare keys."""
    raw = _public(key).public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def commitment_key(key: Ed25519PrivateKey) -> bytes:
    """A 32-byte MAC key derived from the site's private key: for commitments only the site can open.

    HKDF-SHA256 with its own label, so it is independent of the signing key's use.
    """
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedmed ledger update commitment v1").derive(raw)
