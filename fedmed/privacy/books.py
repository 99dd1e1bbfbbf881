"""A site's privacy books for one dataset: the accountant state, cross-checked with the ledger.

Two records of the spend live on the site's disk: the accountant state file (the
history Opacus resumes from) and the signed, hash-chained ledger. Before training they
must agree. A state file that is missing while the ledger has entries, that was edited,
or that points at a ledger entry which is gone, refuses training: restarting the spend
at zero would be the silent failure. The one disagreement that is repaired is the one a
crash leaves: the ledger entry appended, the state file not yet saved. The ledger is
signed and can only raise the spend, so the state is brought forward to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.errors import PrivacyError
from fedmed.privacy.accountant import AccountantStore, MechanismStep
from fedmed.privacy.ledger import (
    LedgerEntry,
    append_entry,
    history_for,
    verify_ledger_file,
)

log = logging.getLogger("fedmed.privacy")

LEDGER_FILE = "ledger.jsonl"


class PrivacyBooks:
    """Spend on one dataset (by fingerprint) at one site, kept in ``state_dir``."""

    def __init__(
        self, state_dir: Path, *, site: str, fingerprint: str, accountant: str, key: Ed25519PrivateKey
    ) -> None:
        self.site = site
        self.fingerprint = fingerprint
        self.key = key
        self.ledger_path = state_dir / LEDGER_FILE
        self.store = AccountantStore(state_dir / "privacy" / f"{fingerprint}.json", accountant=accountant)
        self.verified: list[LedgerEntry] | None = None
        """The ledger as ``spent`` verified it, kept current by ``record``."""

    def entries(self) -> list[LedgerEntry]:
        """The site's whole ledger, verified against its own key.

        Raises:
            PrivacyError: the ledger is broken (edited, reordered, torn, badly signed).
        """
        return verify_ledger_file(self.ledger_path, self.key.public_key())

    def spent(self) -> list[MechanismStep]:
        """The verified history for this dataset.

        Raises:
            PrivacyError: the state file and the ledger disagree in a way a crash cannot
                explain; the message says which and how to recover.
        """
        self.verified = self.entries()
        mine = [e for e in self.verified if e.dataset_fingerprint == self.fingerprint]
        ledger_history = history_for(mine, self.fingerprint)
        where = f"site {self.site}: privacy state {self.store.path}"
        if not self.store.exists():
            if mine:
                raise PrivacyError(
                    f"{where} is missing, but the ledger records {len(mine)} round(s) on this "
                    "dataset; refusing to train rather than restart the spend at zero (restore "
                    "the state file from backup)"
                )
            # Open the books before the first entry, so that a crash right after that
            # entry is told apart from a state file deleted later.
            self.store.save([], ledger_head=None)
            return []
        history, head = self.store.load_state()
        if history and not mine:
            raise PrivacyError(
                f"{where} records spend but the ledger {self.ledger_path} has none for "
                "this dataset: the ledger was lost or replaced; refusing to train"
            )
        hashes = [e.entry_hash for e in mine]
        logged = 0 if head is None else hashes.index(head) + 1 if head in hashes else None
        if logged is None or history_for(mine[:logged], self.fingerprint) != history:
            raise PrivacyError(
                f"{where} does not match the signed ledger (the state was edited, or ledger "
                "entries were removed); refusing to train"
            )
        if logged < len(mine):
            log.warning("%s is behind the ledger (a crash after logging a round); catching up", where)
            self.store.save(ledger_history, ledger_head=hashes[-1])
        return ledger_history

    def check_new_round(self, run_id: str, round: int) -> None:  # noqa: A002 - the ledger's field name
        """Refuse to train a (run, round) this site already trained: a repeated round lets a
        server collect two releases of one round (and two secure-aggregation sessions).

        Raises:
            PrivacyError: the verified ledger already records that round.
        """
        entries = self.verified if self.verified is not None else self.entries()
        if any((e.run_id, e.round) == (run_id, round) for e in entries):
            raise PrivacyError(
                f"site {self.site} already trained round {round} of run {run_id} (it is in its ledger); "
                "a site trains each round once, whatever the server asks"
            )

    def record(self, **fields: object) -> LedgerEntry:
        """Log one trained round: append the signed ledger entry, then save the state.

        The order matters: a crash between the two leaves the ledger ahead, which
        ``spent`` repairs; the reverse order could leave spend with no signed record.
        """
        entry = append_entry(self.ledger_path, self.key, dataset_fingerprint=self.fingerprint, **fields)
        # append_entry verified the ledger before extending it; read it again only if the
        # copy ``spent`` verified is not the ledger the entry was appended to
        if self.verified is not None and entry.index == len(self.verified):
            self.verified = [*self.verified, entry]
        else:
            self.verified = self.entries()
        self.store.save(history_for(self.verified, self.fingerprint), ledger_head=entry.entry_hash)
        return entry
