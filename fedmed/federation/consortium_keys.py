"""The simulated consortium's identity keys and key manifest.

A module of its own so that both ``simulation`` (before a run) and ``baselines`` (before
each leave-one-site-out federation) prepare keys without importing each other:
``simulation`` imports ``baselines``.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.config import ExperimentConfig
from fedmed.federation.node import SIGNING_KEY_FILE
from fedmed.secure.keys import load_or_create_signing_key
from fedmed.secure.manifest import MANIFEST_FILE, write_manifest


def prepare_site_keys(config: ExperimentConfig) -> Path:
    """Give every simulated hospital its identity key and write the consortium's manifest.

    A real consortium hands these out when it provisions its sites; here the keys live in
    each simulated site's state folder and outlive runs, like its privacy ledger.
    """
    keys = {
        site: load_or_create_signing_key(config.state_root / site / SIGNING_KEY_FILE).public_key()
        for site in config.data.sites
    }
    return write_manifest(config.state_root / MANIFEST_FILE, keys)
