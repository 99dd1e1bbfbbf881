"""Tests for fedmed.privacy.books: the accountant state and the signed ledger must agree before training.

In-process and fast; tests/federation/test_site_books.py kills real processes instead.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.errors import PrivacyError
from fedmed.privacy.accountant import MechanismStep
from fedmed.privacy.books import LEDGER_FILE, PrivacyBooks
from fedmed.privacy.ledger import LedgerError, append_entry

SITE = "site-a"
FINGERPRINT = "ab12" * 4
OTHER_FINGERPRINT = "cd34" * 4


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def open_books(
    state_dir: Path, key: Ed25519PrivateKey, fingerprint: str = FINGERPRINT, accountant: str = "prv"
) -> PrivacyBooks:
    return PrivacyBooks(state_dir, site=SITE, fingerprint=fingerprint, accountant=accountant, key=key)


def round_fields(
    round_: int, *, noise: float = 1.1, sample_rate: float = 0.125, steps: int = 8, **overrides: Any
) -> dict[str, Any]:
    """What the site logs for one trained round (everything but the dataset fingerprint)."""
    fields = {
        "site": SITE,
        "run_id": "run-1",
        "round": round_,
        "n_records": 450,
        "model_hash": "a" * 64,
        "update_hash": "b" * 64,
        "noise_multiplier": noise,
        "sample_rate": sample_rate,
        "steps": steps,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "accountant": "prv",
        "epsilon": 0.7 * round_,
        "budget_epsilon": 8.0,
    }
    return {**fields, **overrides}


def record(books: PrivacyBooks, round_: int, **kwargs: Any) -> None:
    books.record(**round_fields(round_, **kwargs))


def state_file(books: PrivacyBooks) -> dict[str, Any]:
    return json.loads(books.store.path.read_text(encoding="utf-8"))


def ledger_lines(books: PrivacyBooks) -> list[str]:
    return books.ledger_path.read_text(encoding="ascii").splitlines()


def where(books: PrivacyBooks) -> str:
    return re.escape(f"site {SITE}: privacy state {books.store.path}")


# ---------------------------------------------------------------- agreeing books


def test_fresh_books_have_spent_nothing(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    assert books.spent() == []
    assert books.entries() == []
    assert not books.ledger_path.exists()
    assert books.store.load() == [] and books.store.ledger_head() is None  # the books are open


def test_files_live_in_the_state_dir(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    assert books.ledger_path == state_dir / LEDGER_FILE
    assert books.store.path == state_dir / "privacy" / f"{FINGERPRINT}.json"
    assert books.ledger_path.is_file() and books.store.path.is_file()


def test_record_appends_then_saves_state_with_the_ledger_head(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    entry = books.record(**round_fields(1))
    assert entry.index == 0 and entry.site == SITE and entry.dataset_fingerprint == FINGERPRINT
    assert books.entries() == [entry]
    saved = state_file(books)
    assert saved == {"accountant": "prv", "history": [[1.1, 0.125, 8]], "ledger_head": entry.entry_hash}
    assert books.store.ledger_head() == entry.entry_hash
    assert books.spent() == [MechanismStep(1.1, 0.125, 8)]


@pytest.mark.parametrize(
    "second, expected",
    [
        ({}, [MechanismStep(1.1, 0.125, 16)]),
        ({"steps": 5}, [MechanismStep(1.1, 0.125, 13)]),
        ({"noise": 0.9}, [MechanismStep(1.1, 0.125, 8), MechanismStep(0.9, 0.125, 8)]),
        ({"sample_rate": 0.25}, [MechanismStep(1.1, 0.125, 8), MechanismStep(1.1, 0.25, 8)]),
    ],
    ids=["same-terms-merged", "same-terms-other-steps", "noise-differs", "rate-differs"],
)
def test_two_rounds_give_the_merged_history(
    state_dir: Path, key: Ed25519PrivateKey, second: dict[str, Any], expected: list[MechanismStep]
) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2, **second)
    assert books.spent() == expected
    assert open_books(state_dir, key).spent() == expected  # a fresh process reads the same
    assert books.store.load() == expected
    assert books.store.ledger_head() == books.entries()[-1].entry_hash


def test_spent_leaves_agreeing_files_alone(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2)
    before = (books.store.path.read_bytes(), books.ledger_path.read_bytes())
    books.spent()
    assert (books.store.path.read_bytes(), books.ledger_path.read_bytes()) == before


# ---------------------------------------------------------------- disagreements that refuse


def test_missing_state_with_ledger_entries_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2)
    books.store.path.unlink()
    with pytest.raises(
        PrivacyError, match=where(books) + r" is missing, but the ledger records 2 round\(s\) on this dataset"
    ):
        books.spent()
    assert not books.store.exists()  # not silently recreated


def test_edited_state_history_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2)
    saved = state_file(books)
    saved["history"] = [[1.1, 0.125, 8]]  # understate the spend, keep the head
    books.store.path.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(PrivacyError, match=where(books) + " does not match the signed ledger"):
        books.spent()


def test_edited_state_head_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    saved = state_file(books)
    saved["ledger_head"] = "f" * 64
    books.store.path.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(PrivacyError, match=where(books) + " does not match the signed ledger"):
        books.spent()


def test_removed_last_ledger_line_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2, noise=0.9)
    lines = ledger_lines(books)
    books.ledger_path.write_text(lines[0] + "\n", encoding="ascii")  # still a valid ledger on its own
    assert len(books.entries()) == 1
    with pytest.raises(PrivacyError, match=where(books) + r" does not match the signed ledger .*entries were removed"):
        books.spent()


def test_deleted_ledger_with_recorded_spend_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    books.ledger_path.unlink()
    with pytest.raises(
        PrivacyError,
        match=where(books) + " records spend but the ledger .* has none for this dataset: "
        "the ledger was lost or replaced; refusing to train",
    ):
        books.spent()


def test_ledger_replaced_by_another_datasets_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    books.ledger_path.unlink()
    record(open_books(state_dir, key, OTHER_FINGERPRINT), 1)  # a fresh ledger, other data only
    with pytest.raises(PrivacyError, match="the ledger was lost or replaced"):
        books.spent()


def test_edited_ledger_entry_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    record(books, 2)
    lines = ledger_lines(books)
    first = json.loads(lines[0])
    first["steps"] = 1  # understate the first round's spend
    lines[0] = json.dumps(first, separators=(",", ":"))
    books.ledger_path.write_text("\n".join(lines) + "\n", encoding="ascii")
    with pytest.raises(
        LedgerError, match=r"privacy ledger failed verification.*entry 0 \(line 1\): entry_hash does not match"
    ):
        books.spent()
    with pytest.raises(PrivacyError, match="failed verification"):  # never extended either
        record(books, 3)


def test_ledger_signed_with_another_key_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    record(open_books(state_dir, key), 1)
    books = open_books(state_dir, Ed25519PrivateKey.generate())
    with pytest.raises(PrivacyError, match=r"entry 0 \(line 1\): signature does not verify"):
        books.spent()
    with pytest.raises(PrivacyError, match="signature does not verify"):
        record(books, 2)


def test_state_kept_by_another_accountant_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    record(open_books(state_dir, key), 1)
    with pytest.raises(PrivacyError, match=r"was kept with the 'prv' accountant, not 'rdp'"):
        open_books(state_dir, key, accountant="rdp").spent()


def test_unreadable_state_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    books.store.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(PrivacyError, match="privacy history is unreadable"):
        books.spent()


# ---------------------------------------------------------------- the crash that is repaired


def crash_after_ledger(books: PrivacyBooks, round_: int, **kwargs: Any) -> None:
    """What a kill between ``append_entry`` and the state save leaves: the ledger one entry ahead."""
    append_entry(books.ledger_path, books.key, dataset_fingerprint=books.fingerprint, **round_fields(round_, **kwargs))


@pytest.mark.parametrize(
    "second, expected",
    [
        ({}, [MechanismStep(1.1, 0.125, 16)]),
        ({"noise": 0.9}, [MechanismStep(1.1, 0.125, 8), MechanismStep(0.9, 0.125, 8)]),
    ],
    ids=["same-terms", "other-noise"],
)
def test_crash_between_ledger_and_state_is_caught_up(
    state_dir: Path,
    key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
    second: dict[str, Any],
    expected: list[MechanismStep],
) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    head_before = books.store.ledger_head()
    crash_after_ledger(books, 2, **second)
    assert books.store.ledger_head() == head_before  # the state is behind
    with caplog.at_level(logging.WARNING, logger="fedmed.privacy"):
        assert books.spent() == expected  # the ledger's history, round 2 included
    assert "is behind the ledger" in caplog.text
    last = books.entries()[-1]
    assert last.round == 2
    assert state_file(books)["ledger_head"] == last.entry_hash
    assert books.store.load() == expected
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmed.privacy"):
        assert open_books(state_dir, key).spent() == expected  # now in agreement: no second repair
    assert caplog.text == ""


def test_recording_continues_after_a_caught_up_crash(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    crash_after_ledger(books, 2)
    books.spent()
    record(books, 3)
    assert books.spent() == [MechanismStep(1.1, 0.125, 24)]
    assert [e.round for e in books.entries()] == [1, 2, 3]


def test_record_after_crash_without_spent_still_saves_the_whole_history(
    state_dir: Path, key: Ed25519PrivateKey
) -> None:
    books = open_books(state_dir, key)
    record(books, 1)
    crash_after_ledger(books, 2, noise=0.9)
    record(books, 3, noise=0.9)
    assert books.store.load() == [MechanismStep(1.1, 0.125, 8), MechanismStep(0.9, 0.125, 16)]
    assert books.spent() == books.store.load()


def test_state_rolled_back_to_an_earlier_head_is_brought_forward(state_dir: Path, key: Ed25519PrivateKey) -> None:
    """An old but consistent state file looks like a crash: the signed ledger can only raise the spend."""
    books = open_books(state_dir, key)
    record(books, 1)
    old_state = books.store.path.read_bytes()
    record(books, 2, noise=0.9)
    books.store.path.write_bytes(old_state)
    assert books.spent() == [MechanismStep(1.1, 0.125, 8), MechanismStep(0.9, 0.125, 8)]


def test_crash_in_the_first_round_is_caught_up(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    assert books.spent() == []  # the site opens its books before its first round
    crash_after_ledger(books, 1)
    assert books.spent() == [MechanismStep(1.1, 0.125, 8)]


def test_state_deleted_after_the_first_round_refuses(state_dir: Path, key: Ed25519PrivateKey) -> None:
    books = open_books(state_dir, key)
    books.spent()
    crash_after_ledger(books, 1)
    books.store.path.unlink()
    with pytest.raises(PrivacyError, match="is missing, but the ledger records 1 round"):
        books.spent()


# ---------------------------------------------------------------- several datasets, one ledger


def test_two_datasets_keep_separate_histories(state_dir: Path, key: Ed25519PrivateKey) -> None:
    first = open_books(state_dir, key, FINGERPRINT)
    second = open_books(state_dir, key, OTHER_FINGERPRINT)
    record(first, 1)
    assert second.spent() == []  # the other dataset's entries are not this one's spend
    record(second, 1, noise=2.0, sample_rate=0.5, steps=3, run_id="run-2")
    record(first, 2)  # interleaved: still merged within the first dataset
    record(second, 2, noise=2.0, sample_rate=0.5, steps=3, run_id="run-2")
    assert first.ledger_path == second.ledger_path
    assert [e.dataset_fingerprint for e in first.entries()] == [FINGERPRINT, OTHER_FINGERPRINT] * 2
    assert first.spent() == [MechanismStep(1.1, 0.125, 16)]
    assert second.spent() == [MechanismStep(2.0, 0.5, 6)]
    assert first.store.path != second.store.path


def test_one_datasets_lost_state_does_not_affect_another(state_dir: Path, key: Ed25519PrivateKey) -> None:
    first = open_books(state_dir, key, FINGERPRINT)
    second = open_books(state_dir, key, OTHER_FINGERPRINT)
    record(first, 1)
    record(second, 1, run_id="run-2")
    second.store.path.unlink()
    assert first.spent() == [MechanismStep(1.1, 0.125, 8)]
    with pytest.raises(PrivacyError, match=r"is missing, but the ledger records 1 round\(s\)"):
        second.spent()


def test_crash_on_one_dataset_is_caught_up_past_another_datasets_entries(
    state_dir: Path, key: Ed25519PrivateKey
) -> None:
    first = open_books(state_dir, key, FINGERPRINT)
    second = open_books(state_dir, key, OTHER_FINGERPRINT)
    record(first, 1)
    record(second, 1, run_id="run-2")
    crash_after_ledger(first, 2, noise=0.9)
    record(second, 2, run_id="run-2")
    assert first.spent() == [MechanismStep(1.1, 0.125, 8), MechanismStep(0.9, 0.125, 8)]
    assert first.store.ledger_head() == first.entries()[2].entry_hash
    assert second.spent() == [MechanismStep(1.1, 0.125, 16)]


def test_a_round_is_recorded_once(state_dir: Path, key: Ed25519PrivateKey) -> None:
    """A site never trains a (run, round) twice: a server repeating a round gets a refusal."""
    books = open_books(state_dir, key, FINGERPRINT)
    books.spent()
    record(books, 1)
    with pytest.raises(PrivacyError, match="already trained round 1 of run run-1"):
        books.check_new_round("run-1", 1)
    books.check_new_round("run-1", 2)
    books.check_new_round("run-2", 1)
    with pytest.raises(PrivacyError, match="run run-1 round 1 is already in the ledger"):
        record(books, 1)
