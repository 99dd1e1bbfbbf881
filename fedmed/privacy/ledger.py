"""A site's privacy ledger: hash-chained, signed JSON Lines, one entry per training round.

Each line is one JSON object with the fields of :class:`LedgerEntry`, in that order.

* ``entry_hash`` is SHA-256 (hex) over the canonical JSON of every field before it
  (everything except ``entry_hash`` and ``signature``).
* ``prev_hash`` is the previous entry's ``entry_hash`` (:data:`GENESIS_HASH` for entry 0),
  so removing, inserting, reordering or editing an entry breaks the chain.
* ``signature`` is base64 Ed25519 over the canonical JSON of every field except
  ``signature`` (so it covers ``entry_hash`` too). Only the site's key can extend the chain.
* Canonical JSON is ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
  ensure_ascii=True, allow_nan=False)``; floats are written as Python's ``repr``, which
  reads back to the same float, so a verifier re-serialising the parsed values gets the
  same bytes.

What the chain cannot show on its own: that entries were cut off the *end* (a shorter
ledger is a valid ledger). The server, which saw every round's reply, has to compare
the ledger's length and last ``entry_hash`` with what the site reported.

A crash while appending can leave a last line without its line end (a torn write).
Readers report it as a problem ("last entry is incomplete (torn write)") and the site
refuses to extend the ledger until an operator has looked at it: fail closed, because
the round may or may not have been released.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedmed import __version__
from fedmed.errors import PrivacyError
from fedmed.privacy.accountant import MechanismStep

if TYPE_CHECKING:
    import torch  # only the hashing of model states needs it; `fedmed audit` reads ledgers without it

GENESIS_HASH = "0" * 64
"""``prev_hash`` of entry 0."""

UNREADABLE_LINE = "__unreadable_line__"
"""Key of the stand-in dict that :func:`read_unverified_entries` returns for a line that is
not a JSON object (or is torn); its value says what is wrong. :func:`verify_entries`
reports it as a problem."""

ACCOUNTANTS = ("prv", "rdp")

TORN_WRITE = "last entry is incomplete (torn write): the line has no line end (a crash while appending?)"


class LedgerError(PrivacyError):
    """The ledger cannot be read, or fails verification where it must be intact."""


@dataclass(frozen=True)
class LedgerEntry:
    """One round of DP training at one site, as recorded in the ledger."""

    index: int
    site: str
    run_id: str
    round: int
    dataset_fingerprint: str
    n_records: int
    """Training records N that the DP guarantee protects."""
    model_hash: str
    """SHA-256 of the model the site received (:func:`hash_state`)."""
    update_hash: str
    """HMAC-SHA256 of the update it sent back, under a key only the site holds
    (:func:`commit_state`): it binds the entry to one update, and the site can show which,
    but nobody without the site's key can test a guessed dataset against it."""
    noise_multiplier: float
    sample_rate: float
    steps: int
    """DP-SGD steps taken this round."""
    max_grad_norm: float
    delta: float
    accountant: str
    """The Opacus accountant the site trained with: "prv" or "rdp"."""
    epsilon: float
    """The site's cumulative epsilon for this dataset after this round."""
    budget_epsilon: float
    fedmed_version: str
    time: str
    """ISO 8601, UTC."""
    prev_hash: str
    entry_hash: str
    signature: str

    def body(self) -> dict[str, Any]:
        """Every field except ``entry_hash`` and ``signature``: what ``entry_hash`` covers."""
        return {name: value for name, value in self._items() if name not in ("entry_hash", "signature")}

    def to_line(self) -> str:
        """The entry as one JSON line (fields in order, no line end)."""
        return json.dumps(dict(self._items()), ensure_ascii=True, allow_nan=False, separators=(",", ":"))

    def history_step(self) -> MechanismStep:
        """This round's ``steps`` of the Poisson-subsampled Gaussian mechanism."""
        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps)

    def _items(self) -> list[tuple[str, Any]]:
        return list(zip(FIELD_NAMES, astuple(self), strict=True))


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LedgerEntry))

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")


def _positive(value: float) -> bool:
    return value > 0


# name -> (type, check, what the check wants); checked on append and on verification.
_FIELD_RULES: dict[str, tuple[type, Any, str]] = {
    "index": (int, lambda v: v >= 0, "an integer >= 0"),
    "site": (str, bool, "a non-empty string"),
    "run_id": (str, bool, "a non-empty string"),
    "round": (int, lambda v: v >= 0, "an integer >= 0"),
    "dataset_fingerprint": (str, _HEX.fullmatch, "lowercase hex"),
    "n_records": (int, lambda v: v >= 1, "an integer >= 1"),
    "model_hash": (str, _HEX64.fullmatch, "64 lowercase hex digits"),
    "update_hash": (str, _HEX64.fullmatch, "64 lowercase hex digits"),
    "noise_multiplier": (float, _positive, "a float > 0"),
    "sample_rate": (float, lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "steps": (int, lambda v: v >= 1, "an integer >= 1"),
    "max_grad_norm": (float, _positive, "a float > 0"),
    "delta": (float, lambda v: 0 < v < 1, "a float in (0, 1)"),
    "accountant": (str, lambda v: v in ACCOUNTANTS, "'prv' or 'rdp'"),
    "epsilon": (float, lambda v: v >= 0, "a float >= 0"),
    "budget_epsilon": (float, _positive, "a float > 0"),
    "fedmed_version": (str, bool, "a non-empty string"),
    "time": (str, lambda v: _parse_time(v) is not None, "an ISO 8601 time with a UTC offset"),
    "prev_hash": (str, _HEX64.fullmatch, "64 lowercase hex digits"),
    "entry_hash": (str, _HEX64.fullmatch, "64 lowercase hex digits"),
    "signature": (str, bool, "a non-empty base64 string"),
}


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _field_problem(name: str, value: Any) -> str | None:
    kind, check, wanted = _FIELD_RULES[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"field {name!r} should be {wanted}, not {type(value).__name__}"
    if kind is float and not math.isfinite(value):
        return f"field {name!r} should be {wanted}, not {value!r}"
    if not check(value):
        return f"field {name!r} should be {wanted}, not {value!r}"
    return None


def _canonical(fields_: Mapping[str, Any]) -> bytes:
    text = json.dumps(fields_, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def compute_entry_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 hex over the canonical JSON of ``body`` (all fields but entry_hash and signature)."""
    return hashlib.sha256(_canonical(body)).hexdigest()


def _signed_bytes(body: Mapping[str, Any], entry_hash: str) -> bytes:
    return _canonical({**body, "entry_hash": entry_hash})


# ---------------------------------------------------------------- hashing model states


def hash_state(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex of a model state: names (sorted), dtypes, shapes and raw bytes.

    Dict order does not matter; any change of name, dtype, shape or value does. Bytes are
    taken from contiguous CPU copies in the machine's byte order (little-endian on every
    platform fedmed runs on). For a model everyone may know (the one the server sent).
    """
    digest = hashlib.sha256(b"fedmed-state-v1\0")
    _feed_state(digest, state)
    return digest.hexdigest()


def commit_state(state: Mapping[str, torch.Tensor], key: bytes) -> str:
    """HMAC-SHA256 hex of a model state (as :func:`hash_state` encodes it) under ``key``.

    For what the site released: a plain hash would let anyone holding the ledger and the
    public model confirm a guess of the site's data by retraining on it.
    """
    mac = hmac.new(key, b"fedmed-state-v1\0", hashlib.sha256)
    _feed_state(mac, state)
    return mac.hexdigest()


def _feed_state(digest: Any, state: Mapping[str, torch.Tensor]) -> None:
    import torch

    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode("utf-8")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        for part in (header, data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)


# ---------------------------------------------------------------- reading and verifying


def _parse_lines(data: bytes) -> list[dict[str, Any]]:
    if not data:
        return []
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # a complete entry always ends with a line end
    if not torn:
        lines.pop()
    parsed: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if torn and number == len(lines):
            parsed.append({UNREADABLE_LINE: TORN_WRITE})
            continue
        parsed.append(_parse_line(line))
    return parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_line(line: bytes) -> dict[str, Any]:
    if not line.strip():
        return {UNREADABLE_LINE: "empty line"}
    try:
        value = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return {UNREADABLE_LINE: "not valid JSON"}
    if not isinstance(value, dict):
        return {UNREADABLE_LINE: "not a JSON object"}
    if UNREADABLE_LINE in value:
        return {UNREADABLE_LINE: f"uses the reserved key {UNREADABLE_LINE!r}"}
    return value


def read_unverified_entries(path: Path) -> list[dict[str, Any]]:
    """The ledger's lines as raw dicts, one per line, nothing checked yet.

    A line that is not a JSON object (or a torn last line, or an empty line) comes back as
    ``{UNREADABLE_LINE: "what is wrong"}`` in its place, so :func:`verify_entries` can
    report it with its position. A missing file is an empty ledger.

    Raises:
        LedgerError: the file exists but cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise LedgerError(f"{path}: cannot read the privacy ledger ({error.strerror})") from None
    return _parse_lines(data)


def verify_entries(
    unverified: list[dict[str, Any]], public_key: Ed25519PublicKey
) -> tuple[list[LedgerEntry], list[str]]:
    """Check fields, index sequence, hash chain and signatures.

    Returns:
        The entries that could be read (tampered ones included, for display) and the
        problems found, each a sentence naming the entry; no problems means intact.
        Tampering never raises.
    """
    entries: list[LedgerEntry] = []
    problems: list[str] = []
    previous: LedgerEntry | None = None  # the entry on the line before, if it was readable
    previous_index: int | None = None
    for position, raw in enumerate(unverified):
        line = position + 1
        if UNREADABLE_LINE in raw:
            problems.append(f"line {line} (entry {_expected(previous_index, position)}): {raw[UNREADABLE_LINE]}")
            previous, previous_index = None, None
            continue
        index = raw.get("index")
        label = f"entry {index} (line {line})" if _field_problem("index", index) is None else f"line {line}"
        entry, entry_problems = _read_entry(raw)
        problems.extend(f"{label}: {problem}" for problem in entry_problems)
        if entry is None:
            previous, previous_index = None, index if isinstance(index, int) and not isinstance(index, bool) else None
            continue
        problems.extend(_sequence_problems(entry, position, previous, previous_index, label))
        problems.extend(_integrity_problems(entry, public_key, label))
        entries.append(entry)
        previous, previous_index = entry, entry.index
    return entries, problems


def _expected(previous_index: int | None, position: int) -> int:
    return position if previous_index is None else previous_index + 1


def _read_entry(raw: dict[str, Any]) -> tuple[LedgerEntry | None, list[str]]:
    problems: list[str] = []
    missing = [name for name in FIELD_NAMES if name not in raw and name != "signature"]
    extra = [name for name in raw if name not in FIELD_NAMES]
    if missing:
        problems.append("missing field(s) " + ", ".join(repr(name) for name in missing))
    if extra:
        problems.append("unexpected field(s) " + ", ".join(repr(name) for name in extra))
    for name in FIELD_NAMES:
        if name in raw and not (name == "signature" and raw[name] == ""):
            problem = _field_problem(name, raw[name])
            if problem:
                problems.append(problem)
    if problems:
        return None, problems
    return LedgerEntry(**{name: raw.get(name, "") for name in FIELD_NAMES}), []


def _sequence_problems(
    entry: LedgerEntry, position: int, previous: LedgerEntry | None, previous_index: int | None, label: str
) -> list[str]:
    problems = []
    if position == 0:
        if entry.index != 0:
            problems.append(f"{label}: the ledger starts at entry {entry.index}, not 0 (earlier entries were removed)")
        if entry.prev_hash != GENESIS_HASH:
            problems.append(
                f"{label}: first line, but its prev_hash is not the genesis hash (earlier entries were removed)"
            )
        return problems
    if previous_index is not None:
        if entry.index > previous_index + 1:
            gap = (
                f"entry {previous_index + 1} is"
                if entry.index == previous_index + 2
                else f"entries {previous_index + 1}-{entry.index - 1} are"
            )
            problems.append(f"{label}: follows entry {previous_index}, so {gap} missing (deleted) or out of order")
        elif entry.index <= previous_index:
            problems.append(
                f"{label}: follows entry {previous_index}: an inserted, duplicated or reordered entry"
            )
    if previous is not None and entry.prev_hash != previous.entry_hash:
        problems.append(
            f"{label}: prev_hash is not entry {previous.index}'s entry_hash: the chain is broken before "
            f"entry {entry.index} (an entry was removed, inserted, reordered or rewritten)"
        )
    return problems


def _integrity_problems(entry: LedgerEntry, public_key: Ed25519PublicKey, label: str) -> list[str]:
    problems = []
    body = entry.body()
    if compute_entry_hash(body) != entry.entry_hash:
        problems.append(f"{label}: entry_hash does not match the entry's contents: the entry was edited")
    if not entry.signature:
        problems.append(f"{label}: has no signature")
        return problems
    try:
        signature = base64.b64decode(entry.signature, validate=True)
        public_key.verify(signature, _signed_bytes(body, entry.entry_hash))
    except (InvalidSignature, binascii.Error, ValueError):
        problems.append(
            f"{label}: signature does not verify with the site's public key (forged, edited, or signed by another key)"
        )
    return problems


def verify_entry(raw: dict[str, Any], public_key: Ed25519PublicKey) -> LedgerEntry:
    """One entry on its own (fields, hash, signature): what the server checks as entries arrive.

    The chain is for a whole ledger to show; a single entry shows only that the site signed it.

    Raises:
        LedgerError: the entry is malformed or not signed by ``public_key``.
    """
    if not isinstance(raw, dict):
        raise LedgerError("a ledger entry must be a JSON object")
    entry, problems = _read_entry(raw)
    if entry is not None:
        problems = _integrity_problems(entry, public_key, f"entry {entry.index}")
    if problems:
        raise LedgerError("; ".join(problems))
    return entry


def duplicate_rounds(entries: list[LedgerEntry]) -> list[str]:
    """Problems: a (run, round) recorded twice, which a site never does (a replayed round)."""
    seen: dict[tuple[str, int], int] = {}
    problems = []
    for entry in entries:
        first = seen.setdefault((entry.run_id, entry.round), entry.index)
        if first != entry.index:
            problems.append(
                f"entry {entry.index}: run {entry.run_id} round {entry.round} was already recorded by entry {first}: "
                "the site trained one round twice (a server repeating a round can defeat secure aggregation)"
            )
    return problems


def verify_ledger_file(path: Path, public_key: Ed25519PublicKey) -> list[LedgerEntry]:
    """The ledger's entries, after checking it is intact (what a site does before training).

    Raises:
        LedgerError: the file cannot be read or any problem was found; the message lists them.
    """
    entries, problems = verify_entries(read_unverified_entries(path), public_key)
    if problems:
        raise LedgerError(_broken_message(Path(path), problems))
    return entries


def _broken_message(path: Path, problems: list[str]) -> str:
    return (
        f"{path}: privacy ledger failed verification, refusing to use it: " + "; ".join(problems) + ". "
        "An operator must inspect the file; fedmed never extends a broken ledger"
    )


# ---------------------------------------------------------------- appending


def append_entry(
    path: Path,
    key: Ed25519PrivateKey,
    *,
    site: str,
    run_id: str,
    round: int,  # noqa: A002 - the ledger's field name
    dataset_fingerprint: str,
    n_records: int,
    model_hash: str,
    update_hash: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float,
    delta: float,
    accountant: str,
    epsilon: float,
    budget_epsilon: float,
    now: datetime | None = None,
) -> LedgerEntry:
    """Verify the ledger at ``path`` with ``key``'s public key, then append one signed entry.

    ``index``, ``prev_hash``, ``fedmed_version`` and ``time`` (``now``, default the current
    UTC time) are filled in. The line is written in one ``write`` on a file opened for
    appending, then flushed and fsynced; an exclusive ``flock`` (where available) keeps two
    processes of the same site from interleaving.

    Raises:
        LedgerError: the ledger is unreadable or broken (never extended), belongs to another
            site, or a field has the wrong type or an impossible value.
    """
    given = {
        "site": site,
        "run_id": run_id,
        "round": round,
        "dataset_fingerprint": dataset_fingerprint,
        "n_records": n_records,
        "model_hash": model_hash,
        "update_hash": update_hash,
        "noise_multiplier": _as_float(noise_multiplier),
        "sample_rate": _as_float(sample_rate),
        "steps": steps,
        "max_grad_norm": _as_float(max_grad_norm),
        "delta": _as_float(delta),
        "accountant": accountant,
        "epsilon": _as_float(epsilon),
        "budget_epsilon": _as_float(budget_epsilon),
    }
    problems = [problem for name, value in given.items() if (problem := _field_problem(name, value))]
    if problems:
        raise LedgerError(f"{path}: refusing to write a ledger entry: " + "; ".join(problems))
    when = now if now is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held across verify and append under one lock
    except OSError as error:
        raise LedgerError(f"{path}: cannot open the privacy ledger ({error.strerror})") from None
    with handle:
        _lock(handle)
        handle.seek(0)
        entries, problems = verify_entries(_parse_lines(handle.read()), key.public_key())
        if problems:
            raise LedgerError(_broken_message(path, problems))
        if entries and entries[-1].site != site:
            raise LedgerError(f"{path}: this ledger belongs to site {entries[-1].site!r}, not {site!r}")
        if any((e.run_id, e.round) == (run_id, round) for e in entries):
            raise LedgerError(
                f"{path}: run {run_id} round {round} is already in the ledger; a site trains each round once"
            )
        body = {
            "index": len(entries),
            **given,
            "fedmed_version": __version__,
            "time": when.astimezone(UTC).isoformat(timespec="milliseconds"),
            "prev_hash": entries[-1].entry_hash if entries else GENESIS_HASH,
        }
        entry_hash = compute_entry_hash(body)
        signature = base64.b64encode(key.sign(_signed_bytes(body, entry_hash))).decode("ascii")
        entry = LedgerEntry(**body, entry_hash=entry_hash, signature=signature)
        handle.write(entry.to_line().encode("ascii") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        _fsync_folder(path.parent)
    return entry


def _as_float(value: Any) -> Any:
    """Ints become floats (8 -> 8.0) so the JSON type is stable; anything else is checked later."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _lock(handle: Any) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed


def _fsync_folder(folder: Path) -> None:
    """Make a new file's directory entry durable too (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- history


def history_for(entries: list[LedgerEntry], fingerprint: str) -> list[MechanismStep]:
    """The mechanism history of one dataset: its entries' steps, in order.

    Consecutive steps with the same (noise multiplier, sample rate) are merged, as an Opacus
    accountant does, so the result compares equal to an Opacus accountant's history.
    """
    history: list[MechanismStep] = []
    for entry in entries:
        if entry.dataset_fingerprint != fingerprint:
            continue
        step = entry.history_step()
        last = history[-1] if history else None
        if last is not None and (last.noise_multiplier, last.sample_rate) == (step.noise_multiplier, step.sample_rate):
            history[-1] = MechanismStep(last.noise_multiplier, last.sample_rate, last.steps + step.steps)
        else:
            history.append(step)
    return history
