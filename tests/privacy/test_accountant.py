"""Tests for fedmed.privacy.accountant: epsilon against Google's dp_accounting, calibration, the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dp_accounting
import pytest

from fedmed.errors import PrivacyError
from fedmed.privacy import accountant as accountant_module
from fedmed.privacy.accountant import (
    AccountantStore,
    MechanismStep,
    calibrate_noise,
    epsilon_of,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def poisson_gaussian(q: float, sigma: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def google_rdp(history: list[MechanismStep], delta: float) -> float:
    """Epsilon by dp_accounting's RDP accountant, an implementation independent of Opacus."""
    rdp = dp_accounting.rdp.RdpAccountant()
    for step in history:
        rdp.compose(poisson_gaussian(step.sample_rate, step.noise_multiplier, step.steps))
    return rdp.get_epsilon(delta)


def google_pld(history: list[MechanismStep], delta: float) -> float:
    pld = dp_accounting.pld.PLDAccountant()
    for step in history:
        pld.compose(poisson_gaussian(step.sample_rate, step.noise_multiplier, step.steps))
    return pld.get_epsilon(delta)


# ---------------------------------------------------------------- epsilon_of


@pytest.mark.parametrize(
    "history, delta",
    [
        ([MechanismStep(4.0, 0.01, 10_000)], 1e-5),
        ([MechanismStep(4.0, 0.01, 10_000)], 1e-6),
        ([MechanismStep(1.3, 150 / 60_000, 6_000)], 1e-5),
        ([MechanismStep(2.0, 1.0, 50)], 1e-5),  # no subsampling: fractional orders are exact
        ([MechanismStep(1.0, 0.01, 1_000)], 1e-6),
        ([MechanismStep(1.2, 0.0625, 64)], 1e-5),  # a small site: 1000 records, batch 64, one epoch
        ([MechanismStep(2.0, 0.05, 1_000)], 1e-5),
        ([MechanismStep(1.0, 0.01, 100), MechanismStep(2.0, 0.02, 500)], 1e-5),  # mixed history
    ],
    ids=["abadi", "abadi-delta-1e-6", "tf-privacy", "full-batch", "q001", "small-site", "sigma2", "mixed"],
)
def test_rdp_agrees_with_dp_accounting(history: list[MechanismStep], delta: float) -> None:
    ours = epsilon_of(history, delta=delta, accountant="rdp")
    assert ours > 0
    assert ours == pytest.approx(google_rdp(history, delta), rel=1e-6)


@pytest.mark.parametrize(
    "history",
    [
        [MechanismStep(1.0, 0.25, 8)],
        [MechanismStep(0.8, 0.1, 100)],
        [MechanismStep(0.7, 0.004, 2_000)],
        [MechanismStep(1.1, 0.02, 500), MechanismStep(1.5, 0.05, 300)],
    ],
    ids=["tiny-site", "low-noise", "very-low-noise", "mixed"],
)
def test_rdp_at_fractional_orders_is_within_dp_accounting(history: list[MechanismStep]) -> None:
    """Where the best Renyi order is fractional, dp_accounting 0.6 is the looser of the two.

    Checked by quadrature for q=0.25, sigma=1, order 3.4 (8 steps): the exact RDP is 2.3143055,
    Opacus gives 2.3143055 and dp_accounting 2.3162340. Both are valid upper bounds.
    """
    ours = epsilon_of(history, delta=1e-5, accountant="rdp")
    google = google_rdp(history, 1e-5)
    assert ours <= google <= ours * 1.005


def test_published_vector_q001_sigma4() -> None:
    """FIELD-NOTES: q=0.01, sigma=4, T=10000, delta=1e-5: RDP 1.0355, PLD 0.9470, Opacus PRV 0.9569."""
    history = [MechanismStep(4.0, 0.01, 10_000)]
    rdp = epsilon_of(history, delta=1e-5, accountant="rdp")
    prv = epsilon_of(history, delta=1e-5, accountant="prv")
    pld = google_pld(history, 1e-5)
    assert rdp == pytest.approx(1.0355, abs=5e-5)
    assert prv == pytest.approx(0.9569, abs=5e-4)
    assert pld == pytest.approx(0.9470, abs=5e-4)
    assert pld <= prv <= rdp  # PRV is an upper bound on the tight PLD value, tighter than RDP
    assert prv - pld < 0.02


def test_tf_privacy_vector() -> None:
    """TF Privacy: N=60000, batch 150, sigma=1.3, 15 epochs, delta=1e-5 -> 0.72422 (RDP)."""
    steps = 15 * 60_000 // 150
    epsilon = epsilon_of([MechanismStep(1.3, 150 / 60_000, steps)], delta=1e-5, accountant="rdp")
    assert epsilon == pytest.approx(0.72422, abs=5e-6)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_empty_history_spends_nothing(accountant: str) -> None:
    assert epsilon_of([], delta=1e-5, accountant=accountant) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_split_history_equals_merged(accountant: str) -> None:
    split = [MechanismStep(1.0, 0.05, 60), MechanismStep(1.0, 0.05, 40)]
    merged = [MechanismStep(1.0, 0.05, 100)]
    assert epsilon_of(split, delta=1e-5, accountant=accountant) == pytest.approx(
        epsilon_of(merged, delta=1e-5, accountant=accountant), rel=1e-3
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_grows_with_steps_and_shrinks_with_noise(accountant: str) -> None:
    def eps(sigma: float, steps: int) -> float:
        return epsilon_of([MechanismStep(sigma, 0.05, steps)], delta=1e-5, accountant=accountant)

    assert eps(1.0, 10) < eps(1.0, 100) < eps(1.0, 1000)
    assert eps(2.0, 100) < eps(1.0, 100)


# ---------------------------------------------------------------- calibrate_noise


@pytest.mark.parametrize(
    "accountant, target, sample_rate, steps",
    [
        ("rdp", 1.0, 0.01, 1000),
        ("rdp", 3.0, 0.25, 40),
        ("rdp", 0.5, 0.05, 200),
        ("prv", 0.5, 0.05, 200),
    ],
)
def test_calibrate_noise_meets_target(accountant: str, target: float, sample_rate: float, steps: int) -> None:
    sigma = calibrate_noise(
        target_epsilon=target, delta=1e-5, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
    assert sigma > 0
    spent = epsilon_of([MechanismStep(sigma, sample_rate, steps)], delta=1e-5, accountant=accountant)
    assert target - 0.05 <= spent <= target
    if accountant == "rdp":  # and by the independent accountant too
        assert google_rdp([MechanismStep(sigma, sample_rate, steps)], 1e-5) <= target


def test_calibrated_noise_is_smaller_for_a_larger_budget() -> None:
    def sigma(target: float) -> float:
        return calibrate_noise(
            target_epsilon=target, delta=1e-5, sample_rate=0.01, steps=1000, accountant="rdp"
        )

    assert sigma(4.0) < sigma(1.0)


# ---------------------------------------------------------------- AccountantStore

HISTORY = [MechanismStep(1.1, 0.015625, 128), MechanismStep(0.9, 1 / 3, 6)]


def test_store_round_trips(tmp_path: Path) -> None:
    store = AccountantStore(tmp_path / "site-a" / "privacy.json", accountant="prv")
    store.save(HISTORY)  # creates the folder
    assert AccountantStore(store.path, accountant="prv").load() == HISTORY
    store.save([*HISTORY, MechanismStep(1.1, 0.015625, 64)])
    assert store.load()[-1] == MechanismStep(1.1, 0.015625, 64)
    assert len(store.load()) == 3


def test_store_keeps_exact_floats(tmp_path: Path) -> None:
    history = [MechanismStep(1.0 / 3.0, 1.0 / 7.0, 10)]
    store = AccountantStore(tmp_path / "h.json", accountant="rdp")
    store.save(history)
    assert store.load() == history
    reloaded = epsilon_of(store.load(), delta=1e-5, accountant="rdp")
    assert reloaded == epsilon_of(history, delta=1e-5, accountant="rdp")


def test_store_saves_empty_history(tmp_path: Path) -> None:
    store = AccountantStore(tmp_path / "h.json", accountant="rdp")
    store.save([])
    assert store.path.exists() and store.load() == []


def test_missing_file_is_an_empty_history(tmp_path: Path) -> None:
    store = AccountantStore(tmp_path / "never-written.json", accountant="prv")
    assert store.load() == []
    assert not store.path.exists()


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        '{"accountant": "prv", "history": [[1.0, 0.1',  # truncated write
        "[]",
        '{"history": [[1.0, 0.1, 5]]}',
        '{"accountant": "prv"}',
        '{"accountant": "prv", "history": [[1.0, 0.1]]}',
        '{"accountant": "prv", "history": [["one", 0.1, 5]]}',
        '{"accountant": "prv", "history": 3}',
    ],
    ids=[
        "empty", "not-json", "truncated", "list", "no-accountant", "no-history",
        "short-entry", "bad-number", "history-not-a-list",
    ],
)
def test_corrupt_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "privacy.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PrivacyError, match=rf"{path}: privacy history is unreadable .*refusing to train"):
        AccountantStore(path, accountant="prv").load()


def test_undecodable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "privacy.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PrivacyError, match="privacy history is unreadable"):
        AccountantStore(path, accountant="prv").load()


def test_file_of_another_accountant_raises(tmp_path: Path) -> None:
    path = tmp_path / "privacy.json"
    AccountantStore(path, accountant="rdp").save(HISTORY)
    with pytest.raises(
        PrivacyError, match=rf"{path}: privacy history was kept with the 'rdp' accountant, not 'prv'"
    ):
        AccountantStore(path, accountant="prv").load()


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = AccountantStore(tmp_path / "privacy.json", accountant="prv")
    for n in range(3):
        store.save(HISTORY[: n + 1])
    assert os.listdir(tmp_path) == ["privacy.json"]
    assert json.loads(store.path.read_text())["accountant"] == "prv"


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AccountantStore(tmp_path / "privacy.json", accountant="prv")
    store.save(HISTORY)
    before = store.path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(accountant_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save([*HISTORY, MechanismStep(1.0, 0.5, 2)])
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["privacy.json"]  # the temporary file was removed
    assert store.load() == HISTORY


def test_crash_while_writing_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AccountantStore(tmp_path / "privacy.json", accountant="prv")
    store.save(HISTORY)

    def crash(payload: object, handle: object) -> None:
        handle.write('{"accountant": "prv", "hist')  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(accountant_module.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save([])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["privacy.json"]
    assert store.load() == HISTORY
