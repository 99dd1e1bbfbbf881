"""The consortium key manifest: written once, read by every site and the server."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.errors import ConfigError
from fedmed.secure.keys import public_key_pem
from fedmed.secure.manifest import load_manifest, write_manifest


def test_a_manifest_round_trips(tmp_path: Path) -> None:
    keys = {site: Ed25519PrivateKey.generate().public_key() for site in ("site-b", "site-a")}
    path = write_manifest(tmp_path / "keys" / "consortium-keys.json", keys)
    loaded = load_manifest(path)
    assert list(loaded) == ["site-a", "site-b"]
    assert all(public_key_pem(loaded[s]) == public_key_pem(keys[s]) for s in keys)


def test_a_missing_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.json: no consortium key manifest here"):
        load_manifest(tmp_path / "nowhere.json")


@pytest.mark.parametrize("text", ["not json", '{"sites": {"site-a": "not a key"}}', '{"nodes": {}}'])
def test_a_malformed_manifest_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json: not a consortium key manifest"):
        load_manifest(path)
