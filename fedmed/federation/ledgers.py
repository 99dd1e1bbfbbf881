"""The consortium's copy of each site's privacy ledger, as entries arrive with the replies.

Only entries that verify with the site's key from the consortium's manifest are kept, and
only from the verified site they belong to: no node can write another site's copy. The
site's own ledger, on its own disk, stays the reference (``fedmed audit`` on either).
"""

from __future__ import annotations

import json

from fedmed.federation.identity import SiteRegistry
from fedmed.federation.recorder import RunRecorder
from fedmed.privacy.ledger import LedgerError, verify_entry


def record_ledger(recorder: RunRecorder, registry: SiteRegistry, site: str, lines: list[str]) -> None:
    """Keep the entries of a verified site's ledger that its manifest key signed; report the rest."""
    key = registry.keys[site]
    kept = []
    for line in lines:
        try:
            entry = verify_entry(json.loads(line), key)
        except (LedgerError, ValueError, TypeError) as error:
            recorder.emit("warning", site=site, reason=f"a ledger entry from site {site} does not verify: {error}")
            continue
        if entry.site != site:
            recorder.emit("warning", site=site, reason=f"site {site} sent a ledger entry of site {entry.site}")
            continue
        kept.append(line)
    recorder.record_ledger(site, kept, key)
