"""Independent verification of sites' privacy ledgers, for auditors.

The auditor trusts neither the site's arithmetic nor Opacus: the chain and signatures are
checked against the site's public key, and epsilon is recomputed from the recorded
(noise multiplier, sample rate, steps) history with Google's ``dp_accounting`` (PLD and
RDP), an implementation independent of Opacus.

A site's verdict is "fail" when any of these holds:

* the ledger is not intact (a broken chain, a bad hash or signature, an unreadable or torn
  line): the problems are the reasons;
* the reported epsilon is below the recomputed PLD epsilon by more than
  :data:`REPORT_TOLERANCE` (2 %). Opacus' PRV and dp_accounting's PLD are both upper
  bounds of the same quantity and agree to about 1 % (PRV comes out slightly higher); RDP
  is looser, so a site that trained with PRV legitimately reports less than RDP, and RDP
  is shown but never used for this check;
* the recomputed PLD epsilon exceeds the budget by more than
  :data:`fedmed.privacy.plan.BUDGET_TOLERANCE` (the slack the site's own check allows), or
  an entry reports an epsilon over its own budget;
* delta is not below 1/N for the N records, or delta or N changed within the dataset's
  history (epsilons at different deltas do not compose into one guarantee);
* the ledger has no entries (an emptied ledger cannot be told from one never written), or
  its entries name another site;
* a (run, round) is recorded twice: a site trains each round once, so a repeat means a
  server replayed a round (which can defeat secure aggregation) or the ledger was spliced;
* in a run folder, the ledger copy lacks a round that ``results.json`` says the site trained
  in this run (its tail was cut off).

Which key a ledger is checked against decides how much a pass means. A key the auditor
gives (``--public-key``) or the consortium's key manifest (``--manifest``, default: the
manifest the run recorded in results.json) makes a pass a pass. A key found only beside
the ledger was written by whoever wrote the ledger copy: a ledger that verifies with it
alone is **unverified**, never passed.

"The dataset" of a site is the dataset fingerprint of its last entry; its numbers are
reported. Entries for other fingerprints (earlier datasets of the same site) are audited
the same way, each fingerprint on its own; their failures become reasons naming the
fingerprint, and a note (shown to people, not in the JSON) says they were checked.

What an audit cannot show: entries cut off the end of a ledger (see
:mod:`fedmed.privacy.ledger`), and who owns a key. A public key found beside a ledger proves
nothing to someone who could rewrite both; give the site's key with ``--public-key`` and
compare the fingerprints with the ones the sites published.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.markup import escape

from fedmed.errors import FedmedError
from fedmed.privacy.accountant import MechanismStep
from fedmed.privacy.ledger import (
    LedgerEntry,
    duplicate_rounds,
    history_for,
    read_unverified_entries,
    verify_entries,
)
from fedmed.privacy.plan import BUDGET_TOLERANCE
from fedmed.secure.keys import key_fingerprint, load_public_key_file
from fedmed.secure.manifest import load_manifest

KEY_FROM_AUDITOR = "auditor"
KEY_FROM_MANIFEST = "manifest"
KEY_BESIDE_LEDGER = "beside the ledger"

REPORT_TOLERANCE = 0.02
"""Relative slack for "reported epsilon is not below the recomputed one": Opacus PRV and
dp_accounting PLD agree within about 1 % (PRV has an error bound of 0.01 and returns the
upper end); 2 % leaves room for that and for PLD's discretisation."""

PLD_DISCRETIZATION = 1e-4
"""dp_accounting's default ``value_discretization_interval``. The quickstart history (80
steps, q=0.125, sigma 1) takes about 0.6 s, 10 000 steps at q=0.05, sigma 0.8 about 1.3 s,
and every further distinct (noise, sample rate) pair about 0.5 s more."""

COARSE_PLD_DISCRETIZATION = 1e-3
"""Used for histories of more than :data:`MAX_FINE_MECHANISMS` distinct (noise, sample rate)
pairs, about 10x faster; still an upper bound, about 1.5 % looser at epsilon near 1."""

MAX_FINE_MECHANISMS = 4
"""Up to this many distinct (noise, sample rate) pairs the fine interval is used (a few seconds at most)."""

_ACCOUNTANT_NAMES = {
    "prv": "Opacus' PRV accountant",
    "rdp": "Opacus' RDP accountant",
    "pld": "Google dp_accounting's PLD accountant (recomputed by the auditor)",
}

# ---------------------------------------------------------------- epsilon


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp_accounting's RDP logs a warning per fractional order it skips; the skip only loosens the bound."""
    logger = logging.getLogger("absl")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def recompute_epsilon(history: list[MechanismStep], delta: float) -> dict[str, float]:
    """Epsilon of ``history`` at ``delta`` by dp_accounting's PLD and RDP accountants.

    Each step is ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``
    under add-or-remove-one adjacency, as Opacus accounts. Composition is commutative, so
    steps with the same (sigma, q) are pooled first: a run of identical rounds costs one
    self-composition, however many rounds it has.

    Raises:
        FedmedError: dp_accounting is not installed.
    """
    try:
        import dp_accounting
    except ImportError:
        raise FedmedError(
            "auditing needs Google's dp-accounting package (an accountant independent of Opacus): "
            "pip install dp-accounting"
        ) from None
    pooled: dict[tuple[float, float], int] = {}
    for step in history:
        mechanism = (step.noise_multiplier, step.sample_rate)
        pooled[mechanism] = pooled.get(mechanism, 0) + step.steps
    if not pooled:
        return {"pld": 0.0, "rdp": 0.0}
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise)), steps
            )
            for (noise, sample_rate), steps in pooled.items()
        ]
    )
    interval = PLD_DISCRETIZATION if len(pooled) <= MAX_FINE_MECHANISMS else COARSE_PLD_DISCRETIZATION
    with _quiet_absl():
        pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval).compose(event).get_epsilon(delta)
        rdp = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)
    return {"pld": float(pld), "rdp": float(rdp)}


def privacy_statement(
    *,
    site: str,
    epsilon: float,
    delta: float,
    n_records: int,
    budget_epsilon: float | None,
    accountant: str,
) -> str:
    """The guarantee in words, one short paragraph (ASCII: "epsilon", not the Greek letter).

    ``accountant`` is "prv", "rdp" or "pld" (named in full) or any other description.
    """
    budget = f"budget epsilon {budget_epsilon:g}" if budget_epsilon is not None else "no epsilon budget was set"
    return (
        f"Sample-level (epsilon={epsilon:.3f}, delta={delta:g})-differential privacy for each of the "
        f"{n_records} training records of site {site}'s dataset, under DP-SGD with Poisson sampling "
        f"(assumed, as Opacus implements it), accounted with {_ACCOUNTANT_NAMES.get(accountant, accountant)}; "
        f"{budget}. Not covered: a patient with several images (a record is one image, not one patient), "
        "the evaluation metrics the site releases, hyperparameter choices, and data used outside fedmed."
    )


def _not_confirmed(site: str) -> str:
    return f"No privacy guarantee is confirmed for site {site}: the audit failed (see the reasons)."


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class SiteAudit:
    """The audit of one site's ledger."""

    site: str
    verdict: str
    """"pass", "fail", or "unverified" (intact, but only against the key beside the ledger)."""
    reasons: list[str]
    """Why it failed, one sentence each; empty when it passes."""
    entries: int
    delta: float | None
    budget_epsilon: float | None
    reported_epsilon: float | None
    recomputed_epsilon: dict[str, float] | None
    history: list[MechanismStep]
    statement: str
    public_key_fingerprint: str
    head: dict[str, Any] | None = None
    """The last entry's index and entry_hash: compare them with the site's own ledger."""
    key_source: str = KEY_BESIDE_LEDGER
    """Who vouches for the key: the auditor, the consortium's manifest, or only the file beside the ledger."""
    notes: list[str] = field(default_factory=list)
    """For people only (not in the JSON): what else was checked."""
    public_key_source: str = ""
    """Where the public key came from (not in the JSON)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "entries": self.entries,
            "delta": self.delta,
            "budget_epsilon": self.budget_epsilon,
            "reported_epsilon": self.reported_epsilon,
            "recomputed_epsilon": dict(self.recomputed_epsilon) if self.recomputed_epsilon is not None else None,
            "history": [
                {"noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate, "steps": s.steps}
                for s in self.history
            ],
            "statement": self.statement,
            "public_key_fingerprint": self.public_key_fingerprint,
            "key_source": self.key_source,
            "head": self.head,
        }


@dataclass(frozen=True)
class AuditReport:
    """The audit of every ledger under one path."""

    sites: list[SiteAudit]

    @property
    def verdict(self) -> str:
        """"pass" when there is at least one site and every site passes; "unverified" when none
        fails but some were checked only against the key beside their ledger."""
        if not self.sites or any(s.verdict == "fail" for s in self.sites):
            return "fail"
        return "pass" if all(s.verdict == "pass" for s in self.sites) else "unverified"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "sites": [s.to_json() for s in self.sites]}


# ---------------------------------------------------------------- auditing


def audit_ledger(unverified_entries: list[dict[str, Any]], public_key: Ed25519PublicKey, *, site: str) -> SiteAudit:
    """Audit one site's ledger (its raw lines, from :func:`read_unverified_entries`).

    Never raises for what the ledger contains: every finding becomes a reason.
    """
    entries, reasons = verify_entries(unverified_entries, public_key)
    fingerprint = key_fingerprint(public_key)
    if not entries:
        reasons.append(
            "the ledger has no readable entries, so nothing can be audited "
            "(an emptied ledger cannot be told apart from one never written)"
        )
        return SiteAudit(
            site=site,
            verdict="fail",
            reasons=reasons,
            entries=len(unverified_entries),
            delta=None,
            budget_epsilon=None,
            reported_epsilon=None,
            recomputed_epsilon=None,
            history=[],
            statement=_not_confirmed(site),
            public_key_fingerprint=fingerprint,
        )
    other_sites = sorted({e.site for e in entries if e.site != site})
    if other_sites:
        reasons.append(f"entries name site(s) {', '.join(repr(s) for s in other_sites)}, not {site!r}")
    reasons.extend(duplicate_rounds(entries))
    last = entries[-1]
    notes = []
    recomputed: dict[str, float] = {}
    for dataset in dict.fromkeys(e.dataset_fingerprint for e in entries):
        mine = [e for e in entries if e.dataset_fingerprint == dataset]
        is_last = dataset == last.dataset_fingerprint
        dataset_reasons, dataset_epsilon = _audit_dataset(mine, history_for(entries, dataset))
        prefix = "" if is_last else f"earlier dataset {dataset[:16]}: "
        reasons.extend(prefix + reason for reason in dataset_reasons)
        if is_last:
            recomputed = dataset_epsilon
        else:
            notes.append(f"{len(mine)} entries for an earlier dataset ({dataset[:16]}) were audited too")
    history = history_for(entries, last.dataset_fingerprint)
    verdict = "fail" if reasons else "pass"
    # On a pass the site's own figure is confirmed (never below the independent PLD
    # bound), so the statement is the one results.json carries, word for word.
    statement = (
        privacy_statement(
            site=site,
            epsilon=last.epsilon,
            delta=last.delta,
            n_records=last.n_records,
            budget_epsilon=last.budget_epsilon,
            accountant=last.accountant,
        )
        if verdict == "pass"
        else _not_confirmed(site)
    )
    return SiteAudit(
        site=site,
        verdict=verdict,
        reasons=reasons,
        entries=len(unverified_entries),
        delta=last.delta,
        budget_epsilon=last.budget_epsilon,
        reported_epsilon=last.epsilon,
        recomputed_epsilon=recomputed,
        history=history,
        statement=statement,
        public_key_fingerprint=fingerprint,
        head={"index": last.index, "entry_hash": last.entry_hash},
        notes=notes,
    )


def _audit_dataset(entries: list[LedgerEntry], history: list[MechanismStep]) -> tuple[list[str], dict[str, float]]:
    """Privacy checks of one dataset's entries (all with one fingerprint, in ledger order)."""
    reasons = []
    last = entries[-1]
    for name, what in (("delta", "delta"), ("n_records", "the number of training records")):
        changed = next((e for e in entries if getattr(e, name) != getattr(entries[0], name)), None)
        if changed is not None:
            reasons.append(
                f"{what} changed within this dataset's history ({getattr(entries[0], name):g} at entry "
                f"{entries[0].index}, {getattr(changed, name):g} at entry {changed.index}); "
                "epsilons at different deltas or for different record counts do not add up to one guarantee"
            )
    if last.delta >= 1.0 / last.n_records:
        reasons.append(
            f"delta {last.delta:g} is not below 1/N = {1.0 / last.n_records:.3g} for the {last.n_records} "
            "training records: a delta that large allows releasing a whole record"
        )
    for entry in entries:
        if entry.epsilon > entry.budget_epsilon + BUDGET_TOLERANCE:
            reasons.append(
                f"entry {entry.index} reports epsilon {entry.epsilon:.3f}, over its own budget {entry.budget_epsilon:g}"
            )
    recomputed = recompute_epsilon(history, last.delta)
    if last.epsilon < recomputed["pld"] * (1 - REPORT_TOLERANCE) - 1e-6:
        reasons.append(
            f"entry {last.index} reports epsilon {last.epsilon:.4f}, below the independently recomputed "
            f"{recomputed['pld']:.4f} (PLD) by more than {REPORT_TOLERANCE:.0%}: the privacy spend is understated"
        )
    if recomputed["pld"] > last.budget_epsilon + BUDGET_TOLERANCE:
        reasons.append(
            f"the recomputed epsilon {recomputed['pld']:.3f} (PLD) is over the budget {last.budget_epsilon:g}"
        )
    return reasons, recomputed


def audit_path(path: Path, *, public_keys: dict[str, Path] | None = None, manifest: Path | None = None) -> AuditReport:
    """Audit a run folder (``ledgers/<site>.jsonl``, ``results.json``) or one ledger file.

    Each ledger is checked against, in this order: the key the auditor gives in
    ``public_keys`` (site to PEM file), the site's key in ``manifest`` (for a run folder,
    default: the manifest its results.json recorded, if that file is there), or the
    ``.pub`` file beside the ledger, in which case a ledger that verifies is "unverified".
    For a single ledger file the site is the one its entries name (else the file's stem); a
    single key given for a single file is used whatever its site name.

    Raises:
        FedmedError: the path does not exist, holds no ledgers, a ledger has no public key, a
            key names a site without a ledger, a manifest cannot be read, or a file cannot be read.
    """
    path = Path(path)
    keys = {site: Path(key) for site, key in (public_keys or {}).items()}
    if not path.exists():
        raise FedmedError(f"{path}: does not exist; give a run folder (with ledgers/<site>.jsonl) or one ledger file")
    if path.is_file():
        unverified = read_unverified_entries(path)
        site = _named_site(unverified) or path.stem
        if len(keys) == 1:
            keys = {site: next(iter(keys.values()))}
        elif keys and site not in keys:
            raise FedmedError(f"{path}: ledger of site {site!r}, but --public-key names only {', '.join(sorted(keys))}")
        trusted = _KeyRing(keys, manifest, notes=[])
        return AuditReport([_audit_file(path, unverified, site, trusted)])
    results = _read_results(path)
    run_folder = results is not None or (path / "progress.jsonl").exists() or (path / "ledgers").is_dir()
    folder = path / "ledgers" if run_folder else path  # a run folder's ledgers are in ledgers/ only
    ledgers = {ledger.stem: ledger for ledger in sorted(folder.glob("*.jsonl"))}
    if not ledgers and run_folder:
        status = f" (status {results.get('status')}: {results.get('status_reason')})" if results else ""
        raise FedmedError(
            f"{path}: this run recorded no privacy ledger{status}: no site trained in it, so there is no spend "
            "to audit; a site's own ledger is in its state folder (fedmed audit STATE/ledger.jsonl)"
        )
    if not ledgers:
        raise FedmedError(f"{path}: no privacy ledgers found; expected {path / 'ledgers'}/<site>.jsonl")
    unknown = sorted(set(keys) - set(ledgers))
    if unknown:
        raise FedmedError(
            f"{path}: --public-key names site(s) {', '.join(unknown)} without a ledger; ledgers found: "
            + ", ".join(ledgers)
        )
    notes: list[str] = []
    if manifest is None and results is not None:
        manifest = _recorded_manifest(results, notes)
    trusted = _KeyRing(keys, manifest, notes=notes)
    sites = []
    for site, ledger in ledgers.items():
        audit = _audit_file(ledger, read_unverified_entries(ledger), site, trusted)
        if results is not None:
            audit = _cross_check(audit, ledger, results)
        sites.append(audit)
    return AuditReport(sites)


class _KeyRing:
    """The keys an audit trusts: the auditor's own, then the consortium's manifest."""

    def __init__(self, given: dict[str, Path], manifest: Path | None, *, notes: list[str]) -> None:
        self.given, self.manifest_path, self.notes = given, manifest, notes
        self.manifest = load_manifest(manifest) if manifest is not None else None

    def key_for(self, site: str, ledger: Path) -> tuple[Ed25519PublicKey, str, str]:
        """The key for ``site``, where it came from (for people), and who vouches for it."""
        if site in self.given:
            return load_public_key_file(self.given[site]), str(self.given[site]), KEY_FROM_AUDITOR
        if self.manifest is not None:
            if site not in self.manifest:
                raise FedmedError(
                    f"{ledger}: the consortium's key manifest {self.manifest_path} has no key for site {site}; "
                    f"give the key the site published with --public-key {site}=PEMFILE"
                )
            return self.manifest[site], f"{self.manifest_path} (the consortium's key manifest)", KEY_FROM_MANIFEST
        beside = ledger.with_suffix(".pub")
        if not beside.exists():
            raise FedmedError(
                f"{ledger}: no public key for site {site} at {beside}; give the key the site published "
                f"with --public-key {site}=PEMFILE, or the consortium's key manifest with --manifest FILE"
            )
        return load_public_key_file(beside), str(beside), KEY_BESIDE_LEDGER


def _read_results(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _recorded_manifest(results: dict[str, Any], notes: list[str]) -> Path | None:
    """The manifest the run verified sites against, if it is still where the run found it."""
    recorded = results.get("manifest") or {}
    where = recorded.get("path")
    if not where or not Path(where).is_file():
        return None
    digest = hashlib.sha256(Path(where).read_bytes()).hexdigest()
    if recorded.get("sha256") and digest != recorded["sha256"]:
        notes.append(f"the key manifest {where} changed since the run (SHA-256 {digest[:16]}, the run had "
                     f"{str(recorded['sha256'])[:16]})")
    notes.append(f"keys from {where}, SHA-256 {digest[:16]}: compare with your copy of the consortium's manifest")
    return Path(where)


def _cross_check(audit: SiteAudit, ledger: Path, results: dict[str, Any]) -> SiteAudit:
    """Fail a ledger copy that lacks a round results.json says the site trained in this run."""
    run_id = results.get("run_id")
    if not run_id:
        return audit
    trained = [r["round"] for r in results.get("rounds") or [] if audit.site in (r.get("sites") or {})
               and "epsilon" in r["sites"][audit.site]]
    if ((results.get("sites") or {}).get(audit.site) or {}).get("local_model"):
        trained.append(0)
    recorded = {(e.get("run_id"), e.get("round")) for e in read_unverified_entries(ledger)}
    missing = [r for r in trained if (str(run_id), r) not in recorded]
    if not missing:
        return audit
    reason = (
        f"the ledger has no entry for round(s) {', '.join(map(str, missing))} of run {run_id}, which results.json "
        "says the site trained: entries were cut off the ledger's end (compare with the site's own ledger)"
    )
    return replace(audit, verdict="fail", reasons=[*audit.reasons, reason], statement=_not_confirmed(audit.site))


def _named_site(unverified: list[dict[str, Any]]) -> str | None:
    for raw in reversed(unverified):
        if isinstance(raw.get("site"), str) and raw["site"]:
            return str(raw["site"])
    return None


def _audit_file(ledger: Path, unverified: list[dict[str, Any]], site: str, trusted: _KeyRing) -> SiteAudit:
    public_key, source, vouched = trusted.key_for(site, ledger)
    audit = audit_ledger(unverified, public_key, site=site)
    verdict = "unverified" if audit.verdict == "pass" and vouched == KEY_BESIDE_LEDGER else audit.verdict
    return replace(
        audit, verdict=verdict, key_source=vouched, public_key_source=source, notes=[*audit.notes, *trusted.notes]
    )


# ---------------------------------------------------------------- rendering


def render_audit(report: AuditReport, console: Console) -> None:
    """Per site: the verdict, the numbers, the reasons and the guarantee in words."""
    colours = {"pass": "green", "unverified": "yellow", "fail": "red"}
    for audit in report.sites:
        colour = colours[audit.verdict]
        console.print(
            f"[bold {colour}]{audit.verdict.upper()}[/]  [bold]{escape(audit.site)}[/]  "
            f"{audit.entries} ledger entries, public key {audit.public_key_fingerprint}",
            highlight=False,
        )
        source = escape(audit.public_key_source) if audit.public_key_source else "given"
        if audit.key_source == KEY_FROM_AUDITOR:
            console.print(f"  key: {source} (given by the auditor)", highlight=False)
        elif audit.key_source == KEY_FROM_MANIFEST:
            console.print(f"  key: {source}", highlight=False)
        else:
            console.print(
                f"  key: {source} [yellow](found beside the ledger, written by whoever wrote the ledger copy: "
                "unverified; give the consortium's manifest with --manifest FILE or the site's key with "
                "--public-key SITE=PEMFILE)[/]",
                highlight=False,
            )
        if audit.head is not None:
            console.print(
                f"  head: entry {audit.head['index']}, entry_hash {audit.head['entry_hash'][:16]} "
                "(compare with the site's own ledger)",
                highlight=False,
            )
        if audit.recomputed_epsilon is not None:
            console.print(
                f"  epsilon: reported {audit.reported_epsilon:.4f}, recomputed {audit.recomputed_epsilon['pld']:.4f} "
                f"(PLD) / {audit.recomputed_epsilon['rdp']:.4f} (RDP); budget {audit.budget_epsilon:g}; "
                f"delta {audit.delta:g}",
                highlight=False,
            )
        for step in audit.history:
            console.print(
                f"  history: {step.steps} steps at noise multiplier {step.noise_multiplier:.4g}, "
                f"sample rate {step.sample_rate:.4g}",
                highlight=False,
            )
        for reason in audit.reasons:
            console.print(f"  [red]-[/] {escape(reason)}", highlight=False)
        for note in audit.notes:
            console.print(f"  note: {escape(note)}", highlight=False)
        console.print(f"  {escape(audit.statement)}", highlight=False)
        console.print()
    passed = sum(s.verdict == "pass" for s in report.sites)
    console.print(
        f"[bold {colours[report.verdict]}]{report.verdict.upper()}[/]: {passed} of {len(report.sites)} "
        "site ledgers pass",
        highlight=False,
    )
