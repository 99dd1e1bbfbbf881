"""Site identity and the cryptography around it: signing keys for the privacy ledger."""

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

__all__ = [
    "generate_signing_key",
    "key_fingerprint",
    "load_or_create_signing_key",
    "load_public_key",
    "load_public_key_file",
    "load_signing_key",
    "public_key_path",
    "public_key_pem",
]
