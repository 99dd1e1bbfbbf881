"""Tests for fedmed.privacy.ledger: the hash chain and signatures catch every kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import create_accountant

from fedmed.privacy.accountant import MechanismStep, history_of
from fedmed.privacy.ledger import (
    FIELD_NAMES,
    GENESIS_HASH,
    LedgerEntry,
    LedgerError,
    append_entry,
    compute_entry_hash,
    hash_state,
    history_for,
    read_unverified_entries,
    verify_entries,
    verify_ledger_file,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FINGERPRINT = "ab12" * 4


def round_fields(round_: int, **overrides: Any) -> dict[str, Any]:
    fields = {
        "site": "site-a",
        "run_id": "run-1",
        "round": round_,
        "dataset_fingerprint": FINGERPRINT,
        "n_records": 450,
        "model_hash": hashlib.sha256(f"model {round_}".encode()).hexdigest(),
        "update_hash": hashlib.sha256(f"update {round_}".encode()).hexdigest(),
        "noise_multiplier": 1.1,
        "sample_rate": 0.125,
        "steps": 8,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "accountant": "prv",
        "epsilon": 1.5 * round_,
        "budget_epsilon": 8,
    }
    return {**fields, **overrides}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def ledger(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A four-entry ledger, intact."""
    path = tmp_path / "ledgers" / "site-a.jsonl"
    for round_ in range(1, 5):
        append_entry(path, key, now=NOW, **round_fields(round_))
    return path


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))


def problems_of(path: Path, key: Ed25519PrivateKey) -> list[str]:
    return verify_entries(read_unverified_entries(path), key.public_key())[1]


def resign(entry: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Recompute the hash and signature of an edited entry, as an attacker with ``key`` would."""
    body = {k: v for k, v in entry.items() if k not in ("entry_hash", "signature")}
    entry_hash = compute_entry_hash(body)
    canonical = json.dumps({**body, "entry_hash": entry_hash}, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "entry_hash": entry_hash, "signature": base64.b64encode(key.sign(canonical)).decode()}


# ---------------------------------------------------------------- intact ledgers


def test_four_appended_entries_verify(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = verify_ledger_file(ledger, key.public_key())
    assert [e.index for e in entries] == [0, 1, 2, 3]
    assert [e.round for e in entries] == [1, 2, 3, 4]
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:], strict=False))
    assert entries[0].time == "2025-03-01T12:00:00.000+00:00"
    assert entries[0].budget_epsilon == 8.0 and isinstance(entries[0].budget_epsilon, float)


def test_lines_hold_the_fields_in_the_documented_order(ledger: Path) -> None:
    first = lines_of(ledger)[0]
    assert tuple(first) == FIELD_NAMES
    assert FIELD_NAMES[-3:] == ("prev_hash", "entry_hash", "signature")


def test_format_is_checkable_without_fedmed(ledger: Path, key: Ed25519PrivateKey) -> None:
    """What an independent auditor does: hash the canonical body, verify the signature over body + entry_hash."""
    for entry in lines_of(ledger):
        body = {k: v for k, v in entry.items() if k not in ("entry_hash", "signature")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        assert hashlib.sha256(canonical).hexdigest() == entry["entry_hash"]
        signed = json.dumps(
            {**body, "entry_hash": entry["entry_hash"]}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")
        key.public_key().verify(base64.b64decode(entry["signature"]), signed)


def test_entry_round_trips_through_its_line(ledger: Path, key: Ed25519PrivateKey) -> None:
    entry = verify_ledger_file(ledger, key.public_key())[2]
    assert entry.to_line() == ledger.read_text().splitlines()[2]
    assert set(entry.body()) == set(FIELD_NAMES) - {"entry_hash", "signature"}
    assert entry.history_step() == MechanismStep(1.1, 0.125, 8)


def test_missing_ledger_is_empty(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    assert read_unverified_entries(tmp_path / "none.jsonl") == []
    assert verify_ledger_file(tmp_path / "none.jsonl", key.public_key()) == []


# ---------------------------------------------------------------- tampering


def test_edited_field_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    entries[2]["epsilon"] = 0.5  # the site understates its spend
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    edited = "entry 2 (line 3): entry_hash does not match the entry's contents: the entry was edited"
    assert edited in problems
    assert any("entry 2 (line 3): signature does not verify" in p for p in problems)
    assert all("entry 2 " in p for p in problems)


def test_edited_and_rehashed_entry_breaks_signature_and_chain(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    entries[1]["epsilon"] = 0.5
    body = {k: v for k, v in entries[1].items() if k not in ("entry_hash", "signature")}
    entries[1]["entry_hash"] = compute_entry_hash(body)
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    assert any(p.startswith("entry 1 (line 2): signature does not verify") for p in problems)
    assert any(p.startswith("entry 2 (line 3): prev_hash is not entry 1's entry_hash") for p in problems)


def test_deleted_middle_entry_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    del entries[2]
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    assert any("entry 3 (line 3): follows entry 1, so entry 2 is missing (deleted)" in p for p in problems)
    assert any("entry 3 (line 3): prev_hash is not entry 1's entry_hash" in p for p in problems)


def test_deleted_first_entry_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    write_lines(ledger, lines_of(ledger)[1:])
    problems = problems_of(ledger, key)
    assert any("the ledger starts at entry 1, not 0" in p for p in problems)
    assert any("prev_hash is not the genesis hash" in p for p in problems)


def test_truncation_is_not_detectable_from_the_file_alone(ledger: Path, key: Ed25519PrivateKey) -> None:
    """A ledger cut after entry 2 is a valid ledger: the server must cross-check length and last hash."""
    write_lines(ledger, lines_of(ledger)[:3])
    assert problems_of(ledger, key) == []


def test_inserted_copy_of_an_entry_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    entries.insert(2, dict(entries[1]))
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    assert problems == [
        "entry 1 (line 3): follows entry 1: an inserted, duplicated or reordered entry",
        "entry 1 (line 3): prev_hash is not entry 1's entry_hash: the chain is broken before entry 1 "
        "(an entry was removed, inserted, reordered or rewritten)",
    ]


@pytest.mark.parametrize("signer", ["unsigned", "another key"])
def test_appended_entry_with_valid_hash_but_bad_signature_is_detected(
    ledger: Path, key: Ed25519PrivateKey, signer: str
) -> None:
    entries = lines_of(ledger)
    extra = {**entries[-1], "index": 4, "round": 5, "prev_hash": entries[-1]["entry_hash"]}
    forged = resign(extra, Ed25519PrivateKey.generate())
    if signer == "unsigned":
        forged["signature"] = ""
    write_lines(ledger, [*entries, forged])
    problems = problems_of(ledger, key)
    expected = "has no signature" if signer == "unsigned" else "signature does not verify with the site's public key"
    assert problems == [p for p in problems if p.startswith("entry 4 (line 5): ")]
    assert any(expected in p for p in problems) and len(problems) == 1


def test_inserted_entry_in_the_middle_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    forged = resign({**entries[1], "index": 2, "prev_hash": entries[1]["entry_hash"]}, Ed25519PrivateKey.generate())
    write_lines(ledger, [*entries[:2], forged, *entries[2:]])
    problems = problems_of(ledger, key)
    assert any(p.startswith("entry 2 (line 3): signature does not verify") for p in problems)
    assert any(p.startswith("entry 2 (line 4): follows entry 2: an inserted") for p in problems)


def test_reordered_entries_are_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    entries[1], entries[2] = entries[2], entries[1]
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    assert "entry 2 (line 2): follows entry 0, so entry 1 is missing (deleted) or out of order" in problems
    assert any("entry 1 (line 3): follows entry 2: an inserted, duplicated or reordered entry" in p for p in problems)
    assert any("entry 2 (line 2): prev_hash is not entry 0's entry_hash" in p for p in problems)


def test_ledger_signed_by_another_key_fails_every_entry(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "forged.jsonl"
    forger = Ed25519PrivateKey.generate()
    for round_ in range(1, 4):
        append_entry(path, forger, now=NOW, **round_fields(round_))
    problems = problems_of(path, key)
    assert problems == [
        f"entry {i} (line {i + 1}): signature does not verify with the site's public key "
        "(forged, edited, or signed by another key)"
        for i in range(3)
    ]


def test_missing_signature_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    del entries[1]["signature"]
    write_lines(ledger, entries)
    assert problems_of(ledger, key) == ["entry 1 (line 2): has no signature"]


def test_signature_that_is_not_base64_is_detected(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    entries[3]["signature"] = "not base64!"
    write_lines(ledger, entries)
    assert problems_of(ledger, key) == [
        "entry 3 (line 4): signature does not verify with the site's public key "
        "(forged, edited, or signed by another key)"
    ]


@pytest.mark.parametrize("cut", [1, 40, -1], ids=["one-byte", "half", "only-the-line-end"])
def test_torn_last_line_is_reported(ledger: Path, key: Ed25519PrivateKey, cut: int) -> None:
    data = ledger.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    ledger.write_bytes(data[: last_start + cut] if cut > 0 else data[:cut])
    problems = problems_of(ledger, key)
    assert problems == [
        "line 4 (entry 3): last entry is incomplete (torn write): the line has no line end (a crash while appending?)"
    ]


def test_non_json_line_is_reported(ledger: Path, key: Ed25519PrivateKey) -> None:
    lines = ledger.read_text().splitlines()
    lines[1] = '{"index": 1, "site": '
    ledger.write_text("\n".join(lines) + "\n")
    problems = problems_of(ledger, key)
    assert problems == ["line 2 (entry 1): not valid JSON"]


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        ("", "line 2 (entry 1): empty line"),
        ("[1, 2]", "line 2 (entry 1): not a JSON object"),
        ('{"a": 1, "a": 2}', "line 2 (entry 1): not valid JSON"),
        ('{"epsilon": NaN}', "line 2 (entry 1): not valid JSON"),
    ],
    ids=["empty", "array", "duplicate-key", "nan"],
)
def test_unreadable_lines_are_reported(ledger: Path, key: Ed25519PrivateKey, replacement: str, problem: str) -> None:
    lines = ledger.read_text().splitlines()
    lines[1] = replacement
    ledger.write_text("\n".join(lines) + "\n")
    assert problems_of(ledger, key) == [problem]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda e: e.pop("delta"), "missing field(s) 'delta'"),
        (lambda e: e.update(note="x"), "unexpected field(s) 'note'"),
        (lambda e: e.update(epsilon="1.5"), "field 'epsilon' should be a float >= 0, not str"),
        (lambda e: e.update(epsilon=2), "field 'epsilon' should be a float >= 0, not int"),
        (lambda e: e.update(n_records=450.0), "field 'n_records' should be an integer >= 1, not float"),
        (lambda e: e.update(steps=True), "field 'steps' should be an integer >= 1, not bool"),
        (lambda e: e.update(sample_rate=1.5), "field 'sample_rate' should be a float in (0, 1], not 1.5"),
        (lambda e: e.update(accountant="gdp"), "field 'accountant' should be 'prv' or 'rdp', not 'gdp'"),
        (lambda e: e.update(time="yesterday"), "field 'time' should be an ISO 8601 time with a UTC offset"),
        (lambda e: e.update(model_hash="abc"), "field 'model_hash' should be 64 lowercase hex digits"),
    ],
    ids=["missing", "extra", "str", "int-for-float", "float-for-int", "bool", "range", "accountant", "time", "hash"],
)
def test_wrong_fields_are_reported_with_the_entry(
    ledger: Path, key: Ed25519PrivateKey, edit: Any, problem: str
) -> None:
    entries = lines_of(ledger)
    edit(entries[2])
    write_lines(ledger, entries)
    problems = problems_of(ledger, key)
    assert f"entry 2 (line 3): {problem}" in [p[: len(f"entry 2 (line 3): {problem}")] for p in problems]


def test_verify_ledger_file_raises_listing_the_problems(ledger: Path, key: Ed25519PrivateKey) -> None:
    entries = lines_of(ledger)
    del entries[1]
    write_lines(ledger, entries)
    with pytest.raises(LedgerError, match=r"site-a\.jsonl: privacy ledger failed verification.*entry 1 is missing"):
        verify_ledger_file(ledger, key.public_key())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_raises(ledger: Path) -> None:
    ledger.chmod(0)
    with pytest.raises(LedgerError, match="cannot read the privacy ledger"):
        read_unverified_entries(ledger)


# ---------------------------------------------------------------- appending


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-5]),  # torn
        lambda p: p.write_text(p.read_text().replace('"epsilon":3.0', '"epsilon":0.3')),  # edited
        lambda p: write_lines(p, lines_of(p)[::2]),  # deleted entries
    ],
    ids=["torn", "edited", "deleted"],
)
def test_append_refuses_to_extend_a_broken_ledger(ledger: Path, key: Ed25519PrivateKey, damage: Any) -> None:
    damage(ledger)
    before = ledger.read_bytes()
    assert problems_of(ledger, key)
    with pytest.raises(LedgerError, match="failed verification, refusing to use it"):
        append_entry(ledger, key, now=NOW, **round_fields(5))
    assert ledger.read_bytes() == before


def test_append_refuses_a_ledger_signed_by_another_key(ledger: Path) -> None:
    with pytest.raises(LedgerError, match="signature does not verify"):
        append_entry(ledger, Ed25519PrivateKey.generate(), now=NOW, **round_fields(5))


def test_append_refuses_another_sites_ledger(ledger: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(LedgerError, match="belongs to site 'site-a', not 'site-b'"):
        append_entry(ledger, key, now=NOW, **round_fields(5, site="site-b"))


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"sample_rate": 0.0}, "field 'sample_rate' should be a float in (0, 1]"),
        ({"epsilon": float("nan")}, "field 'epsilon' should be a float >= 0, not nan"),
        ({"accountant": "gdp"}, "field 'accountant' should be 'prv' or 'rdp'"),
        ({"steps": 8.0}, "field 'steps' should be an integer >= 1, not float"),
        ({"update_hash": "XYZ"}, "field 'update_hash' should be 64 lowercase hex digits"),
    ],
)
def test_append_refuses_invalid_fields(
    tmp_path: Path, key: Ed25519PrivateKey, override: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "l.jsonl"
    with pytest.raises(LedgerError, match=re.escape(f"refusing to write a ledger entry: {problem}")):
        append_entry(path, key, now=NOW, **round_fields(1, **override))
    assert not path.exists()


def test_append_needs_an_aware_time(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        append_entry(tmp_path / "l.jsonl", key, now=datetime(2025, 1, 1), **round_fields(1))


def test_append_uses_the_current_utc_time_by_default(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    entry = append_entry(tmp_path / "l.jsonl", key, **round_fields(1))
    assert entry.time.endswith("+00:00")
    assert abs((datetime.fromisoformat(entry.time) - datetime.now(UTC)).total_seconds()) < 60


# ---------------------------------------------------------------- model hashes and history


def test_hash_state_ignores_dict_order_and_sees_every_value() -> None:
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.zeros(2), "fc.weight": torch.ones(3)}
    reordered = dict(reversed(list(state.items())))
    assert hash_state(state) == hash_state(reordered)
    assert len(hash_state(state)) == 64
    changed = {**state, "conv.weight": state["conv.weight"].clone()}
    changed["conv.weight"][1, 2] += 1e-6
    assert hash_state(changed) != hash_state(state)
    assert hash_state({**state, "conv.bias": torch.zeros(2, dtype=torch.float64)}) != hash_state(state)
    assert hash_state({**state, "conv.weight": state["conv.weight"].reshape(3, 2)}) != hash_state(state)
    renamed = {("conv.b" if k == "conv.bias" else k): v for k, v in state.items()}
    assert hash_state(renamed) != hash_state(state)


def test_hash_state_of_a_transposed_view_equals_its_contiguous_copy() -> None:
    matrix = torch.arange(6.0).reshape(2, 3)
    assert hash_state({"w": matrix.t()}) == hash_state({"w": matrix.t().contiguous()})
    assert hash_state({"w": torch.ones(2, dtype=torch.bfloat16)})  # dtypes numpy lacks


def _entry(noise: float, rate: float, steps: int, fingerprint: str = FINGERPRINT) -> LedgerEntry:
    fields = {**round_fields(1), "noise_multiplier": noise, "sample_rate": rate, "steps": steps}
    fields["dataset_fingerprint"] = fingerprint
    return LedgerEntry(
        index=0, **fields, fedmed_version="0", time=NOW.isoformat(), prev_hash=GENESIS_HASH, entry_hash="", signature=""
    )


def test_history_for_merges_consecutive_identical_steps_like_opacus() -> None:
    entries = [
        _entry(1.0, 0.1, 5),
        _entry(1.0, 0.1, 5),
        _entry(2.0, 0.1, 3),
        _entry(9.0, 0.5, 7, "ff"),  # another dataset in between does not split the run
        _entry(1.0, 0.1, 2),
    ]
    history = history_for(entries, FINGERPRINT)
    assert history == [MechanismStep(1.0, 0.1, 10), MechanismStep(2.0, 0.1, 3), MechanismStep(1.0, 0.1, 2)]
    opacus = create_accountant("rdp")
    for step in history:
        for _ in range(step.steps):
            opacus.step(noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate)
    assert history_of(opacus) == history
    assert history_for(entries, "ff") == [MechanismStep(9.0, 0.5, 7)]
    assert history_for(entries, "00") == []
