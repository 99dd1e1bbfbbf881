"""Tests for fedmed.privacy.audit and `fedmed audit`: independent recomputation and verdicts."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from fedmed.cli import app as app_module
from fedmed.cli.audit import audit as audit_command
from fedmed.errors import FedmedError
from fedmed.privacy.accountant import MechanismStep, epsilon_of
from fedmed.privacy.audit import (
    MAX_FINE_MECHANISMS,
    AuditReport,
    audit_ledger,
    audit_path,
    privacy_statement,
    recompute_epsilon,
    render_audit,
)
from fedmed.privacy.ledger import append_entry, compute_entry_hash, read_unverified_entries
from fedmed.secure.keys import key_fingerprint, public_key_pem
from fedmed.secure.manifest import write_manifest
from fedmed.secure.statements import canonical_json

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

NOW = datetime(2025, 3, 1, tzinfo=UTC)
ROUND = MechanismStep(3.0, 0.125, 8)  # 450 records, batch ~56, one local epoch; sigma 3 keeps PLD fast


# ---------------------------------------------------------------- epsilon


@pytest.mark.parametrize(
    ("history", "delta", "rdp", "pld"),
    [
        # FIELD-NOTES: Abadi et al.'s setting; PLD 0.9470, RDP 1.0355
        ([MechanismStep(4.0, 0.01, 10_000)], 1e-5, (1.0355, 1e-3), (0.9470, 2e-3)),
        # TF Privacy's test vector: N=60000, batch 150, sigma 1.3, 15 epochs of 400 steps
        ([MechanismStep(1.3, 150 / 60_000, 15 * 400)], 1e-5, (0.72422, 1e-4), None),
    ],
    ids=["abadi", "tf-privacy"],
)
def test_recompute_matches_published_vectors(
    history: list[MechanismStep], delta: float, rdp: tuple[float, float], pld: tuple[float, float] | None
) -> None:
    epsilon = recompute_epsilon(history, delta)
    assert epsilon["rdp"] == pytest.approx(rdp[0], abs=rdp[1])
    if pld is not None:
        assert epsilon["pld"] == pytest.approx(pld[0], abs=pld[1])
    assert epsilon["pld"] < epsilon["rdp"]  # PLD is the tighter accountant


def test_recompute_pools_identical_steps_wherever_they_are() -> None:
    split = [MechanismStep(4.0, 0.01, 2_500), MechanismStep(5.0, 0.01, 1), MechanismStep(4.0, 0.01, 7_500)]
    pooled = [MechanismStep(4.0, 0.01, 10_000), MechanismStep(5.0, 0.01, 1)]
    assert recompute_epsilon(split, 1e-5) == recompute_epsilon(pooled, 1e-5)


def test_recompute_with_many_mechanisms_stays_an_upper_bound() -> None:
    """Past MAX_FINE_MECHANISMS distinct pairs the PLD grid is coarser: faster, slightly looser, never lower."""
    import dp_accounting

    history = [MechanismStep(4.0 + i / 10, 0.01, 2_000) for i in range(MAX_FINE_MECHANISMS + 1)]
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(s.sample_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier)),
            s.steps,
        )
        for s in history
    ]
    fine = dp_accounting.pld.PLDAccountant().compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(1e-5)
    coarse = recompute_epsilon(history, 1e-5)["pld"]
    assert fine <= coarse <= fine * 1.03


def test_recompute_of_no_training_is_zero() -> None:
    assert recompute_epsilon([], 1e-5) == {"pld": 0.0, "rdp": 0.0}


def test_statement_is_ascii_and_names_what_is_not_covered() -> None:
    text = privacy_statement(
        site="site-a", epsilon=7.9991, delta=1e-5, n_records=450, budget_epsilon=8.0, accountant="prv"
    )
    assert text.isascii()
    assert text.startswith("Sample-level (epsilon=7.999, delta=1e-05)-differential privacy for each of the 450 ")
    assert "site site-a's dataset" in text and "Opacus' PRV accountant" in text and "budget epsilon 8." in text
    for gap in ("several images", "evaluation metrics", "hyperparameter", "outside fedmed"):
        assert gap in text
    assert "no epsilon budget" in privacy_statement(
        site="s", epsilon=1, delta=1e-6, n_records=9, budget_epsilon=None, accountant="rdp"
    )


# ---------------------------------------------------------------- one ledger


@cache
def reported(history: tuple[MechanismStep, ...], delta: float, accountant: str) -> float:
    return epsilon_of(list(history), delta=delta, accountant=accountant)


def write_ledger(
    path: Path,
    key: Ed25519PrivateKey,
    *,
    rounds: int = 4,
    accountant: str = "prv",
    scale: float = 1.0,
    budget: float = 2.0,
    n_records: int = 450,
    deltas: list[float] | None = None,
    fingerprints: list[str] | None = None,
    site: str = "site-a",
) -> Path:
    """A ledger as an honest site writes it, with the reported epsilon multiplied by ``scale``."""
    deltas = deltas or [1e-5] * rounds
    fingerprints = fingerprints or ["ab" * 8] * rounds
    for r in range(rounds):
        spent = tuple(ROUND for i in range(r + 1) if fingerprints[i] == fingerprints[r])
        fields = {
            "site": site,
            "run_id": "run-1",
            "round": r + 1,
            "dataset_fingerprint": fingerprints[r],
            "n_records": n_records,
            "model_hash": hashlib.sha256(b"m%d" % r).hexdigest(),
            "update_hash": hashlib.sha256(b"u%d" % r).hexdigest(),
            "noise_multiplier": ROUND.noise_multiplier,
            "sample_rate": ROUND.sample_rate,
            "steps": ROUND.steps,
            "max_grad_norm": 1.0,
            "delta": deltas[r],
            "accountant": accountant,
            "epsilon": scale * reported(spent, deltas[r], accountant),
            "budget_epsilon": budget,
        }
        append_entry(path, key, now=NOW, **fields)
    return path


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def audit_of(path: Path, key: Ed25519PrivateKey, site: str = "site-a") -> Any:
    return audit_ledger(read_unverified_entries(path), key.public_key(), site=site)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_honest_ledger_passes(tmp_path: Path, key: Ed25519PrivateKey, accountant: str) -> None:
    result = audit_of(write_ledger(tmp_path / "site-a.jsonl", key, accountant=accountant), key)
    assert result.verdict == "pass", result.reasons
    assert result.reasons == []
    assert result.entries == 4 and result.delta == 1e-5 and result.budget_epsilon == 2.0
    assert result.history == [MechanismStep(3.0, 0.125, 32)]
    assert result.reported_epsilon == pytest.approx(reported((ROUND,) * 4, 1e-5, accountant))
    prv = reported((ROUND,) * 4, 1e-5, "prv")
    assert prv - 0.02 < result.recomputed_epsilon["pld"] <= prv  # both upper bounds; PRV adds its 0.01 error bound
    rdp = reported((ROUND,) * 4, 1e-5, "rdp")
    assert result.recomputed_epsilon["rdp"] == pytest.approx(rdp, rel=1e-3)  # dp_accounting uses other orders
    assert result.public_key_fingerprint == key_fingerprint(key)
    # the site's confirmed figure
    assert result.statement.startswith(f"Sample-level (epsilon={result.reported_epsilon:.3f}, delta=1e-05)")


def test_reporting_slightly_below_pld_is_within_tolerance(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pld = recompute_epsilon([MechanismStep(3.0, 0.125, 32)], 1e-5)["pld"]
    scale = 0.99 * pld / reported((ROUND,) * 4, 1e-5, "prv")  # 1 % below PLD: accountants' own disagreement
    assert audit_of(write_ledger(tmp_path / "l.jsonl", key, scale=scale), key).verdict == "pass"


def test_understated_epsilon_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    result = audit_of(write_ledger(tmp_path / "l.jsonl", key, scale=0.9), key)
    assert result.verdict == "fail"
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("entry 3 reports epsilon ")
    assert "below the independently recomputed" in result.reasons[0] and "understated" in result.reasons[0]
    assert result.statement.startswith("No privacy guarantee is confirmed for site site-a")


def test_over_budget_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    result = audit_of(write_ledger(tmp_path / "l.jsonl", key, budget=0.5), key)
    assert result.verdict == "fail"
    over = [r for r in result.reasons if r.startswith("the recomputed epsilon")]
    assert len(over) == 1 and over[0].endswith("(PLD) is over the budget 0.5")
    assert any(r.startswith("entry 3 reports epsilon") and "over its own budget 0.5" in r for r in result.reasons)


def test_delta_not_below_one_over_n_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    result = audit_of(write_ledger(tmp_path / "l.jsonl", key, n_records=100_000, budget=8.0), key)
    assert result.verdict == "fail"
    assert result.reasons == [
        "delta 1e-05 is not below 1/N = 1e-05 for the 100000 training records: a delta that large allows "
        "releasing a whole record"
    ]


def test_changed_delta_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    result = audit_of(write_ledger(tmp_path / "l.jsonl", key, deltas=[1e-5, 1e-5, 1e-6, 1e-6], budget=8.0), key)
    assert result.verdict == "fail"
    changed = "delta changed within this dataset's history (1e-05 at entry 0, 1e-06 at entry 2)"
    assert any(r.startswith(changed) for r in result.reasons)


def test_tampered_ledger_fails_with_the_problems(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = write_ledger(tmp_path / "l.jsonl", key)
    lines = path.read_text().splitlines()
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    result = audit_of(path, key)
    assert result.verdict == "fail"
    assert any("entry 1 is missing (deleted)" in r for r in result.reasons)


def test_ledger_signed_by_another_key_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = write_ledger(tmp_path / "l.jsonl", Ed25519PrivateKey.generate())
    result = audit_of(path, key)
    assert result.verdict == "fail" and len(result.reasons) == 4
    assert all("signature does not verify" in r for r in result.reasons)


def test_empty_ledger_fails(key: Ed25519PrivateKey) -> None:
    result = audit_ledger([], key.public_key(), site="site-a")
    assert result.verdict == "fail" and "no readable entries" in result.reasons[0]
    assert result.recomputed_epsilon is None and result.history == []


def test_entries_of_another_site_fail(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    result = audit_of(write_ledger(tmp_path / "l.jsonl", key), key, site="site-b")
    assert result.verdict == "fail" and result.reasons == ["entries name site(s) 'site-a', not 'site-b'"]


def test_earlier_dataset_is_audited_on_its_own(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = write_ledger(tmp_path / "l.jsonl", key, fingerprints=["aa"] * 2 + ["bb"] * 2)
    result = audit_of(path, key)
    assert result.verdict == "pass", result.reasons
    assert result.history == [MechanismStep(3.0, 0.125, 16)]
    assert result.notes == ["2 entries for an earlier dataset (aa) were audited too"]


def test_earlier_dataset_failure_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = write_ledger(tmp_path / "l.jsonl", key, rounds=3, fingerprints=["aa", "bb", "bb"], budget=0.3)
    result = audit_of(path, key)
    assert result.verdict == "fail"
    assert any(r.startswith("earlier dataset aa: the recomputed epsilon") for r in result.reasons)
    assert any(r.startswith("the recomputed epsilon") for r in result.reasons)


# ---------------------------------------------------------------- run folders and files


def make_run(tmp_path: Path) -> tuple[Path, dict[str, Ed25519PrivateKey]]:
    """A run folder with two sites: site-a honest, site-b with an edited entry; the
    consortium's manifest in ``tmp_path / "consortium-keys.json"``."""
    run = tmp_path / "run"
    keys = {}
    for site in ("site-a", "site-b"):
        keys[site] = Ed25519PrivateKey.generate()
        ledger = write_ledger(run / "ledgers" / f"{site}.jsonl", keys[site], rounds=2, site=site)
        ledger.with_suffix(".pub").write_text(public_key_pem(keys[site]))
    ledger = run / "ledgers" / "site-b.jsonl"
    ledger.write_text(ledger.read_text().replace('"round":2', '"round":7'))
    write_manifest(tmp_path / "consortium-keys.json", {site: key.public_key() for site, key in keys.items()})
    return run, keys


def test_run_folder_with_one_tampered_site_fails_overall(tmp_path: Path) -> None:
    run, keys = make_run(tmp_path)
    report = audit_path(run, manifest=tmp_path / "consortium-keys.json")
    assert report.verdict == "fail"
    assert [(s.site, s.verdict) for s in report.sites] == [("site-a", "pass"), ("site-b", "fail")]
    assert any("entry 1 (line 2): entry_hash does not match" in r for r in report.sites[1].reasons)
    assert report.sites[0].public_key_fingerprint == key_fingerprint(keys["site-a"])
    assert report.sites[0].key_source == "manifest"


def test_a_key_found_only_beside_the_ledger_verifies_nothing(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    report = audit_path(run)
    assert [(s.site, s.verdict) for s in report.sites] == [("site-a", "unverified"), ("site-b", "fail")]
    (run / "ledgers" / "site-b.jsonl").unlink()
    assert audit_path(run).verdict == "unverified"


def test_a_forged_ledger_with_a_forged_key_beside_it_is_never_passed(tmp_path: Path) -> None:
    """The review's attack: whoever writes the ledger copy writes the key beside it too."""
    run, _ = make_run(tmp_path)
    forger = Ed25519PrivateKey.generate()
    ledger = run / "ledgers" / "site-a.jsonl"
    ledger.unlink()
    write_ledger(ledger, forger, rounds=1, scale=0.5)  # half the spend, signed by the forger
    ledger.with_suffix(".pub").write_text(public_key_pem(forger))
    against_manifest = audit_path(run, manifest=tmp_path / "consortium-keys.json").sites[0]
    assert against_manifest.verdict == "fail"
    assert any("signature does not verify with the site's public key" in r for r in against_manifest.reasons)
    assert audit_path(run).sites[0].verdict != "pass"


def test_given_key_takes_precedence_over_the_manifest_and_the_one_beside(tmp_path: Path) -> None:
    run, keys = make_run(tmp_path)
    (run / "ledgers" / "site-a.pub").write_text(public_key_pem(Ed25519PrivateKey.generate()))  # swapped by someone
    assert audit_path(run).sites[0].verdict == "fail"
    (tmp_path / "a.pem").write_text(public_key_pem(keys["site-a"]))
    audited = audit_path(run, public_keys={"site-a": tmp_path / "a.pem"}).sites[0]
    assert audited.verdict == "pass" and audited.key_source == "auditor"


def test_a_round_recorded_twice_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """A repeated (run, round): the site's own writer refuses it, so this line is written by hand."""
    ledger = write_ledger(tmp_path / "site-a.jsonl", key, rounds=1)
    first = json.loads(ledger.read_text())
    body = {**{k: v for k, v in first.items() if k not in ("entry_hash", "signature")},
            "index": 1, "prev_hash": first["entry_hash"], "epsilon": first["epsilon"] * 1.5}
    entry_hash = compute_entry_hash(body)
    signature = base64.b64encode(key.sign(canonical_json({**body, "entry_hash": entry_hash}))).decode()
    with ledger.open("a") as handle:
        signed = {**body, "entry_hash": entry_hash, "signature": signature}
        handle.write(json.dumps(signed, separators=(",", ":")) + "\n")
    result = audit_of(ledger, key)
    assert result.verdict == "fail"
    assert any("run run-1 round 1 was already recorded by entry 0" in r for r in result.reasons)


def test_a_ledger_copy_cut_short_of_the_run_fails(tmp_path: Path) -> None:
    run, keys = make_run(tmp_path)
    (run / "ledgers" / "site-b.jsonl").unlink()
    manifest = tmp_path / "consortium-keys.json"
    results = {
        "run_id": "run-1",
        "manifest": {"path": str(manifest), "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
        "rounds": [{"round": r, "sites": {"site-a": {"epsilon": 0.1 * r}}} for r in (1, 2, 3)],
        "sites": {"site-a": {"local_model": None}},
    }
    (run / "results.json").write_text(json.dumps(results))
    audited = audit_path(run).sites[0]  # the run's recorded manifest, by default
    assert audited.key_source == "manifest" and audited.verdict == "fail"
    assert any("no entry for round(s) 3 of run run-1" in r and "cut off" in r for r in audited.reasons)
    results["rounds"].pop()
    (run / "results.json").write_text(json.dumps(results))
    assert audit_path(run).sites[0].verdict == "pass"


def test_single_ledger_file_with_its_key_beside_or_given(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    ledger = write_ledger(tmp_path / "ledger.jsonl", key, rounds=1)
    (tmp_path / "ledger.pub").write_text(public_key_pem(key))
    report = audit_path(ledger)
    assert report.verdict == "unverified" and report.sites[0].site == "site-a"  # named by its entries
    (tmp_path / "ledger.pub").unlink()
    (tmp_path / "elsewhere.pem").write_text(public_key_pem(key))
    assert audit_path(ledger, public_keys={"whatever": tmp_path / "elsewhere.pem"}).verdict == "pass"
    write_manifest(tmp_path / "keys.json", {"site-a": key.public_key()})
    assert audit_path(ledger, manifest=tmp_path / "keys.json").verdict == "pass"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda run: run / "nope", "nope: does not exist"),
        (lambda run: (run / "empty").mkdir() or run / "empty", "no privacy ledgers found"),
        (
            lambda run: (run / "ledgers" / "site-a.pub").unlink() or run,
            r"no public key for site site-a .*--public-key site-a=PEMFILE",
        ),
        (lambda run: (run / "ledgers" / "site-b.pub").write_text("junk") and run, r"site-b\.pub: not a PEM public key"),
    ],
    ids=["missing", "no-ledgers", "no-key", "bad-key"],
)
def test_unusable_input_raises(tmp_path: Path, setup: Any, message: str) -> None:
    run, _ = make_run(tmp_path)
    with pytest.raises(FedmedError, match=message):
        audit_path(setup(run))


def test_key_for_a_site_without_a_ledger_raises(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    with pytest.raises(FedmedError, match="names site.s. site-c without a ledger"):
        audit_path(run, public_keys={"site-c": tmp_path / "c.pem"})


def test_render_shows_verdicts_numbers_reasons_and_statement(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    console = Console(record=True, width=200)
    render_audit(audit_path(run, manifest=tmp_path / "consortium-keys.json"), console)
    text = console.export_text()
    assert "PASS  site-a" in text and "FAIL  site-b" in text
    assert "recomputed" in text and "(PLD)" in text and "Sample-level (epsilon=" in text
    assert "entry_hash does not match" in text
    assert "head: entry 1, entry_hash" in text and "consortium's key manifest" in text
    assert "FAIL: 1 of 2 site ledgers pass" in text
    console = Console(record=True, width=200)
    render_audit(audit_path(run), console)
    text = console.export_text()
    assert "UNVERIFIED  site-a" in text and "found beside the ledger" in text


# ---------------------------------------------------------------- the command


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `fedmed audit ...` through fedmed's real main(), which maps FedmedError to exit 2."""
    tiny = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    tiny.callback()(lambda: None)
    tiny.command("audit")(audit_command)
    monkeypatch.setattr(app_module, "app", tiny)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["fedmed", "audit", *args])
        with pytest.raises(SystemExit) as exited:
            app_module.main()
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


SITE_KEYS = {
    "site",
    "verdict",
    "reasons",
    "entries",
    "delta",
    "budget_epsilon",
    "reported_epsilon",
    "recomputed_epsilon",
    "history",
    "statement",
    "public_key_fingerprint",
    "key_source",
    "head",
}


def test_cli_json_shape_and_exit_0(tmp_path: Path, cli: Any) -> None:
    run, keys = make_run(tmp_path)
    (tmp_path / "b.pem").write_text(public_key_pem(keys["site-b"]))
    ledger_a = run / "ledgers" / "site-a.jsonl"
    code, out, _ = cli(str(ledger_a), "--json")
    assert code == 1 and json.loads(out)["verdict"] == "unverified"  # only the key beside it
    code, out, _ = cli(str(ledger_a), "--json", "--manifest", str(tmp_path / "consortium-keys.json"))
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"verdict", "sites"} and report["verdict"] == "pass"
    (site,) = report["sites"]
    assert set(site) == SITE_KEYS
    assert set(site["recomputed_epsilon"]) == {"pld", "rdp"}
    assert site["history"] == [{"noise_multiplier": 3.0, "sample_rate": 0.125, "steps": 16}]


def test_cli_exit_1_when_a_site_fails(tmp_path: Path, cli: Any) -> None:
    run, _ = make_run(tmp_path)
    code, out, _ = cli(str(run), "--json", "--manifest", str(tmp_path / "consortium-keys.json"))
    assert code == 1
    assert [s["verdict"] for s in json.loads(out)["sites"]] == ["pass", "fail"]
    code, out, _ = cli(str(run))
    assert code == 1 and "FAIL  site-b" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}/missing"], "missing: does not exist"),
        (["{run}", "--public-key", "site-a"], "--public-key 'site-a': expected SITE=PEMFILE"),
        (["{run}", "--public-key", "site-a={run}/nope.pem"], r"nope.pem: public key file does not exist"),
    ],
    ids=["missing-path", "malformed-key-option", "missing-key-file"],
)
def test_cli_exit_2_on_unusable_input(tmp_path: Path, cli: Any, args: list[str], message: str) -> None:
    run, _ = make_run(tmp_path)
    code, out, err = cli(*(a.format(run=run) for a in args))
    assert code == 2
    assert message in err.replace("\n", "") and "Traceback" not in out + err


def test_report_verdict_needs_at_least_one_site() -> None:
    assert AuditReport([]).verdict == "fail"


def test_a_run_that_recorded_no_ledger_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.jsonl").write_text('{"event": "start"}\n')  # not a ledger, though it is JSON Lines
    (run / "results.json").write_text(json.dumps({"status": "stopped", "status_reason": "no site trained"}))
    with pytest.raises(FedmedError, match=r"this run recorded no privacy ledger \(status stopped: no site trained\)"):
        audit_path(run)
