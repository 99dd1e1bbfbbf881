"""Signed statements: a site's Ed25519 signature over canonical JSON that names its context.

Every statement a site signs carries the protocol, its kind, the signing site and the
run (and whatever else binds it to one moment: a round, a message id, a transcript), so
a signature made for one purpose never verifies for another. The wire form is the 64-byte
signature followed by the payload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmed.errors import FedmedError

SIGNATURE_BYTES = 64


class StatementError(FedmedError):
    """A signed statement is malformed, unsigned by a known site, or out of context."""


def canonical_json(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign_statement(key: Ed25519PrivateKey, *, protocol: str, kind: str, site: str, **fields: Any) -> bytes:
    """``signature || payload`` over ``{"protocol", "kind", "site", **fields}``."""
    payload = canonical_json({"protocol": protocol, "kind": kind, "site": site, **fields})
    return key.sign(payload) + payload


def open_statement(
    blob: bytes, keys: Mapping[str, Ed25519PublicKey], *, protocol: str, kind: str, expect: Mapping[str, Any],
) -> dict[str, Any]:
    """Verify a statement against the signer's key in ``keys``; return its fields.

    ``expect`` lists fields that must hold exactly these values (run, round, ...).

    Raises:
        StatementError: malformed, a signer not in ``keys``, a bad signature, another
            protocol or kind, or a field that differs from ``expect`` (replayed or stale).
    """
    signature, payload = bytes(blob[:SIGNATURE_BYTES]), bytes(blob[SIGNATURE_BYTES:])
    try:
        fields = json.loads(payload)
        site = str(fields["site"])
    except (ValueError, KeyError, TypeError):
        raise StatementError(f"a {kind} statement is malformed") from None
    key = keys.get(site)
    if key is None:
        raise StatementError(f"a {kind} names site {site!r}, which is not in the consortium's key manifest")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise StatementError(f"the signature on site {site}'s {kind} does not verify: it was altered") from None
    if fields.get("protocol") != protocol or fields.get("kind") != kind:
        raise StatementError(f"site {site}'s statement is not a {protocol} {kind}")
    wrong = {name: fields.get(name) for name, value in expect.items() if fields.get(name) != value}
    if wrong:
        got = ", ".join(f"{name} {value}" for name, value in wrong.items())
        want = ", ".join(f"{name} {expect[name]}" for name in wrong)
        raise StatementError(f"site {site}'s {kind} is for {got}, not {want}: replayed or stale, rejected")
    return fields
