"""Tests for fedmed.secure.keys: a site's Ed25519 identity on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from fedmed.errors import FedmedError
from fedmed.secure.keys import (
    generate_signing_key,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
    load_public_key_file,
    load_signing_key,
    public_key_path,
    public_key_pem,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix_only
def test_key_file_is_0600_and_new_folder_0700(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "site-a.key"
    generate_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_public_key_is_written_beside_the_key(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "site-a.key")
    assert public_key_path(tmp_path / "site-a.key") == tmp_path / "site-a.pub"
    public = load_public_key_file(tmp_path / "site-a.pub")
    assert key_fingerprint(public) == key_fingerprint(key)
    assert (tmp_path / "site-a.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE" not in (tmp_path / "site-a.pub").read_bytes()


def test_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "site-a.key"
    generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(FedmedError, match=r"site-a\.key: a signing key already exists; refusing to overwrite"):
        generate_signing_key(path)
    assert path.read_bytes() == before


def test_refuses_a_key_name_ending_in_pub(tmp_path: Path) -> None:
    with pytest.raises(FedmedError, match="must not end in '.pub'"):
        generate_signing_key(tmp_path / "site.pub")


def test_load_round_trip_signs_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "site-a.key"
    created = generate_signing_key(path)
    loaded = load_signing_key(path)
    signature = loaded.sign(b"round 3")
    created.public_key().verify(signature, b"round 3")
    load_public_key(public_key_pem(created)).verify(signature, b"round 3")
    with pytest.raises(InvalidSignature):
        created.public_key().verify(signature, b"round 4")


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "site-a.key"
    first = load_or_create_signing_key(path)
    second = load_or_create_signing_key(path)
    assert key_fingerprint(first) == key_fingerprint(second)


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_a_key_readable_by_others_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "site-a.key"
    generate_signing_key(path)
    path.chmod(mode)
    expected = rf"accessible by group or others \(mode {mode:03o}\).*chmod 600 .*site-a\.key"
    with pytest.raises(FedmedError, match=expected):
        load_signing_key(path)


def test_missing_key_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FedmedError, match=r"nope\.key: signing key file does not exist"):
        load_signing_key(tmp_path / "nope.key")


def _private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a PEM private key"),
        (b"garbage", "not a PEM private key"),
        (
            generate_private_key(SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "signing key is .*, not Ed25519",
        ),
        (
            generate_private_key(SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "is encrypted",
        ),
    ],
    ids=["empty", "garbage", "ecdsa", "encrypted"],
)
def test_load_rejects_what_is_not_an_ed25519_key(tmp_path: Path, data: bytes, message: str) -> None:
    path = _private_file(tmp_path / "site.key", data)
    with pytest.raises(FedmedError, match=message) as error:
        load_signing_key(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "pem",
    [
        "garbage",
        b"\x00\xff",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["text", "bytes", "bad-base64-body", "ecdsa"],
)
def test_load_public_key_rejects_garbage(pem: str | bytes) -> None:
    with pytest.raises(FedmedError, match="public key"):
        load_public_key(pem)


def test_load_public_key_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.pub").write_text("garbage")
    with pytest.raises(FedmedError, match=r"x\.pub: not a PEM public key"):
        load_public_key_file(tmp_path / "x.pub")
    with pytest.raises(FedmedError, match=r"y\.pub: public key file does not exist"):
        load_public_key_file(tmp_path / "y.pub")


def test_fingerprint_is_16_hex_and_differs_between_keys(tmp_path: Path) -> None:
    a = generate_signing_key(tmp_path / "a.key")
    b = generate_signing_key(tmp_path / "b.key")
    assert len(key_fingerprint(a)) == 16 and int(key_fingerprint(a), 16) >= 0
    assert key_fingerprint(a) == key_fingerprint(a.public_key())
    assert key_fingerprint(a) != key_fingerprint(b)
