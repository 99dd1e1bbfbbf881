"""The consortium's key manifest: every site's Ed25519 identity key, by site id.

Every site and the server hold the same copy, handed out with the consortium's keys, not
relayed by the server during a run: that is what stops a server from substituting a
site's keys in secure aggregation. In simulation the researcher plays every hospital,
so ``fedmed simulate`` writes one from the simulated sites' own keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmed.config.schema import check_site_id
from fedmed.errors import ConfigError, FedmedError
from fedmed.secure.keys import load_public_key, public_key_pem

MANIFEST_FILE = "consortium-keys.json"


def write_manifest(path: Path, keys: Mapping[str, Ed25519PublicKey]) -> Path:
    """Write the manifest atomically (readers never see half a file)."""
    document = {"sites": {site: public_key_pem(keys[site]) for site in sorted(keys)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def load_manifest(path: Path) -> dict[str, Ed25519PublicKey]:
    """Site id to identity key.

    Raises:
        ConfigError: the file is missing or not a manifest; the message names it.
    """
    try:
        sites = json.loads(Path(path).read_text(encoding="utf-8"))["sites"]
        return {check_site_id(site): load_public_key(pem) for site, pem in sites.items()}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no consortium key manifest here; copy the consortium's {MANIFEST_FILE}") from None
    except (ValueError, KeyError, TypeError, AttributeError, FedmedError) as error:
        raise ConfigError(f"{path}: not a consortium key manifest ({error})") from None
