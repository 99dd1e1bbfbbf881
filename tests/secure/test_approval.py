"""Tests for fedmed.secure.approval: a site trains only with code its hospital approved."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import types
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.task_identity import TaskIdentity

import fedmed
from client.app import app as client_app
from fedmed.app_bundle import project_root, stage_app
from fedmed.config import (
    InputConfig,
    ModelConfig,
    PrivacyConfig,
    SecureAggregationConfig,
    SitePolicy,
    TrainingConfig,
    load_config,
    load_site_policy,
)
from fedmed.config.policy import CODE_DIGEST
from fedmed.data import synthesize_hospitals
from fedmed.errors import ConfigError, FedmedError, PrivacyError
from fedmed.federation import site as site_module
from fedmed.federation.consortium_keys import prepare_site_keys
from fedmed.federation.loopback import LoopbackGrid
from fedmed.federation.messages import Key, RoundPlan
from fedmed.federation.server import run_federation
from fedmed.models import create_model, float_state
from fedmed.secure.approval import check_code_approval, code_digest, fab_digest, running_app_dir

PACKAGE = Path(fedmed.__file__).resolve().parent
OTHER = "sha256:" + "0" * 64
POLICY = {"max_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 1.0, "min_noise_multiplier": 0.5,
          "require_secure_aggregation": False}


@pytest.fixture()
def code(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the fedmed package and of the Flower app, somewhere else on disk."""
    package = tmp_path / "site-packages" / "fedmed"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    return package, stage_app(tmp_path / "bundle")


# ------------------------------------------------------------------------------- the digest


def test_the_digest_is_stable_and_well_formed() -> None:
    first = code_digest()
    assert CODE_DIGEST.fullmatch(first)
    assert code_digest() == first == code_digest(project_root(), package_dir=PACKAGE)


def test_the_digest_does_not_depend_on_where_the_code_lies(code: tuple[Path, Path]) -> None:
    package, app = code
    assert code_digest(app, package_dir=package) == code_digest(project_root(), package_dir=PACKAGE)


def install(fab: bytes, folder: Path) -> Path:
    """A FAB installed as Flower installs it: every file but its .info/ hash list."""
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        archive.extractall(folder)
    shutil.rmtree(folder / ".info")
    return folder


def with_file(fab: bytes, name: str, data: bytes) -> bytes:
    """``fab`` with ``name`` added or replaced: what a coordinator could ship without ``flwr build``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as source, zipfile.ZipFile(buffer, "w") as archive:
        for info in source.infolist():
            if info.filename != name:
                archive.writestr(info, source.read(info))
        archive.writestr(name, data)
    return buffer.getvalue()


@contextlib.contextmanager
def quiet_build() -> Iterator[None]:
    """Flower's builder warns through pathspec."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bundle ``flwr run`` builds from this checkout."""
    with quiet_build():
        return build_fab_from_disk(stage_app(tmp_path_factory.mktemp("staged") / "app"))


def test_the_running_app_is_the_installed_bundle_its_client_was_imported_from(
    fab: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = install(fab, tmp_path / "installed")
    fake = types.ModuleType("client.app")
    fake.__file__ = str(installed / "client" / "app.py")
    monkeypatch.setitem(sys.modules, "client.app", fake)
    assert running_app_dir() == installed.resolve()
    assert code_digest() == fab_digest(fab) == code_digest(project_root())
    (installed / "client" / "__pycache__").mkdir()
    (installed / "client" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")  # Python's own
    assert code_digest() == fab_digest(fab)
    (installed / "numpy.py").write_text("print('shadowing numpy')\n")
    assert code_digest() != fab_digest(fab)
    monkeypatch.delitem(sys.modules, "client.app")
    assert running_app_dir() is None  # no ClientApp loaded: the source checkout


def test_the_bundle_flwr_run_ships_has_the_digest_of_the_source(code: tuple[Path, Path]) -> None:
    """``flwr run`` rewrites pyproject.toml into the bundle; the site must still match the review."""
    _, app = code
    with open(app / "pyproject.toml", "a", encoding="utf-8") as pyproject:
        pyproject.write('\n[tool.flwr.federations]\ndefault = "local"\n# a comment\n')  # dropped from the bundle
    with quiet_build():
        shipped = build_fab_from_disk(app)
    assert fab_digest(shipped) == code_digest(app) == code_digest(project_root())


@pytest.mark.parametrize(
    ("name", "data"),
    [("numpy.py", b"import os\n"), ("torch.cpython-311-x86_64-linux-gnu.so", b"\x7fELF"),
     ("client/__pycache__/app.cpython-311.pyc", b"\0" * 16), ("notes.txt", b"hi")],
    ids=["module-named-like-a-dependency", "compiled-extension", "stale-bytecode", "any-other-file"],
)
def test_every_file_of_a_shipped_bundle_counts(fab: bytes, name: str, data: bytes) -> None:
    """The review's finding: the digest left out other top-level modules of the bundle."""
    assert fab_digest(with_file(fab, name, data)) != fab_digest(fab)


def append(path: Path, text: str = "\n# edited\n") -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(text)


CHANGES = {
    "fedmed-file-edited": lambda package, app: append(package / "privacy" / "terms.py"),
    "fedmed-file-added": lambda package, app: (package / "privacy" / "backdoor.py").write_text("x = 1\n"),
    "fedmed-file-removed": lambda package, app: (package / "report" / "plots.py").unlink(),
    "fedmed-file-renamed": lambda package, app: (package / "errors.py").rename(package / "errors2.py"),
    "client-edited": lambda package, app: append(app / "client" / "app.py"),
    "server-edited": lambda package, app: append(app / "server" / "app.py"),
    "app-module-added": lambda package, app: (app / "client" / "extra.py").write_text("y = 2\n"),
    "pyproject-value": lambda package, app: (app / "pyproject.toml").write_text(
        (app / "pyproject.toml").read_text().replace('clientapp = "client.app:app"', 'clientapp = "client.other:app"')
    ),
}

UNCHANGED = {
    "bytecode": lambda package, app: (package / "__pycache__").mkdir(exist_ok=True)
    or (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0"),
    "non-python-file": lambda package, app: (package / "notes.txt").write_text("hi\n"),
    # flwr run ships no such file
    "unbundled-source-file": lambda package, app: (app / "numpy.py").write_text("x = 1\n"),
    "pyproject-comment": lambda package, app: append(app / "pyproject.toml", "\n# a comment\n"),
    "pyproject-federations": lambda package, app: append(
        app / "pyproject.toml", '\n[tool.flwr.federations]\ndefault = "local"\n'
    ),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_any_change_to_the_code_changes_the_digest(code: tuple[Path, Path], change) -> None:  # noqa: ANN001
    package, app = code
    before = code_digest(app, package_dir=package)
    change(package, app)
    assert code_digest(app, package_dir=package) != before


@pytest.mark.parametrize("change", UNCHANGED.values(), ids=UNCHANGED.keys())
def test_what_does_not_run_does_not_change_the_digest(code: tuple[Path, Path], change) -> None:  # noqa: ANN001
    package, app = code
    before = code_digest(app, package_dir=package)
    change(package, app)
    assert code_digest(app, package_dir=package) == before


def test_a_folder_that_is_no_flower_app_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FedmedError, match=re.escape(f"{tmp_path}: not a Flower app")):
        code_digest(tmp_path)


# ------------------------------------------------------------------------------- the policy key


def write_policy(folder: Path, approved: object) -> Path:
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump({**POLICY, "approved_code": approved}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "approved",
    [None, [], [OTHER], [OTHER, "sha256:" + "ab" * 32]],
    ids=["absent", "nothing", "one", "two"],
)
def test_valid_approved_code(tmp_path: Path, approved: list[str] | None) -> None:
    assert load_site_policy(write_policy(tmp_path, approved)).approved_code == approved


@pytest.mark.parametrize(
    "entry",
    ["0" * 64, "sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha256:" + "A" * 64, "sha512:" + "0" * 64,
     "sha256: " + "0" * 64],
    ids=["no-prefix", "short", "long", "uppercase", "other-hash", "space"],
)
def test_a_malformed_digest_is_refused_naming_file_key_and_form(tmp_path: Path, entry: str) -> None:
    path = write_policy(tmp_path, [OTHER, entry])
    with pytest.raises(ConfigError) as caught:
        load_site_policy(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid configuration\n")
    assert f"approved_code: {entry!r}: not a code digest; expected 'sha256:' and 64 lowercase hex digits" in message
    assert repr(OTHER) not in message  # only the bad entry is named


def test_approved_code_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"approved_code: Input should be a valid list"):
        load_site_policy(write_policy(tmp_path, OTHER))


# ------------------------------------------------------------------------------- the check


def policy(approved: list[str] | None) -> SitePolicy:
    return SitePolicy(**POLICY, approved_code=approved)


@pytest.mark.parametrize("simulated", [True, False], ids=["simulated", "hospital"])
def test_approved_code_trains(simulated: bool) -> None:
    check_code_approval(policy([OTHER, code_digest()]), site="site-a", simulated=simulated)


def test_a_simulated_site_without_approved_code_does_not_check() -> None:
    check_code_approval(policy(None), site="site-a", simulated=True)


def test_a_hospital_without_approved_code_fails_closed_with_the_fix() -> None:
    digest = code_digest()
    with pytest.raises(PrivacyError) as caught:
        check_code_approval(policy(None), site="site-a", simulated=False)
    message = str(caught.value)
    assert message.startswith("site site-a has approved no code: its policy has no approved_code")
    assert f'add `approved_code: ["{digest}"]` to the policy' in message
    assert "after reviewing this code" in message and "fedmed code-digest" in message


@pytest.mark.parametrize("simulated", [True, False], ids=["simulated", "hospital"])
@pytest.mark.parametrize("approved", [[], [OTHER]], ids=["nothing", "other-code"])
def test_code_not_listed_is_refused(simulated: bool, approved: list[str]) -> None:
    expected = f"site site-b refuses to run: the hospital has not approved this code ({code_digest()} is not"
    with pytest.raises(PrivacyError, match=re.escape(expected)):
        check_code_approval(policy(approved), site="site-b", simulated=simulated)


# ------------------------------------------------------------------------------- at the site


def train_message() -> Message:
    plan = RoundPlan(
        model=ModelConfig(name="small_cnn"), input=InputConfig(image_size=16),
        training=TrainingConfig(rounds=1, local_epochs=1, batch_size=16),
        privacy=PrivacyConfig(noise_multiplier=1.0, delta=1e-3),
        secure_aggregation=SecureAggregationConfig(enabled=False),
    )
    weights = float_state(create_model("small_cnn", spec=InputConfig(image_size=16)))
    content = RecordDict({
        Key.ARRAYS: ArrayRecord(weights),
        Key.CONFIG: ConfigRecord({Key.PLAN: plan.model_dump_json(), Key.SERVER_ROUND: 1}),
    })
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    return Message(content=content, dst_node_id=1, message_type="train")


def test_a_hospital_node_without_approved_code_replies_why_before_touching_anything(tmp_path: Path) -> None:
    node_config = {
        Key.SITE_ID: "site-a", Key.DATA_DIR: str(tmp_path / "no-data"), Key.STATE_DIR: str(tmp_path / "state"),
        Key.POLICY_PATH: str(write_policy(tmp_path, None)), Key.CACHE_DIR: str(tmp_path / "cache"),
    }
    context = Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    reply = site_module.train_round(train_message(), context)
    assert reply.has_error()
    assert reply.error.reason.startswith("site site-a has approved no code")
    assert code_digest() in reply.error.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml", "state"]  # no data read
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["node.log"]  # no books, no key: only its log
    assert "refusing: site site-a has approved no code" in (tmp_path / "state" / "node.log").read_text()


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(root, n_sites=2, images_per_site=40, image_size=32, seed=3)
    return root


def federate(folder: Path, hospitals: Path, approved: list[str]) -> dict:
    """One small round on LoopbackGrid: the real ServerApp and ClientApp, simulated sites."""
    folder.mkdir()
    write_policy(folder, approved)
    config = {
        "name": "approval",
        "data": {"root": str(hospitals), "sites": ["site-a", "site-b"], "image_size": 16,
                 "cache_dir": str(folder / "cache")},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "min_sites": 2},
        "privacy": {"noise_multiplier": 1.0, "delta": 1e-3},
        "secure_aggregation": {"enabled": False},
        "simulation": {"site_policy": "policy.yaml", "state_root": "state"},
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    prepare_site_keys(load_config(path))
    grid = LoopbackGrid(
        client_app, {10: {Key.PARTITION_ID: 0}, 11: {Key.PARTITION_ID: 1}},
        run_config={Key.CONFIG_PATH: str(path), Key.OUT_DIR: str(folder / "out")},
    )
    torch.set_num_threads(1)
    run_federation(grid, grid.server_context)
    return json.loads((folder / "out" / "results.json").read_text(encoding="utf-8"))


def test_simulated_sites_refuse_code_their_policy_does_not_list(hospitals: Path, tmp_path: Path) -> None:
    results = federate(tmp_path / "run", hospitals, [OTHER])
    assert results["status"] == "stopped"
    reasons = [f["reason"] for f in results["rounds"][0]["failures"]]
    assert len(reasons) == 2
    for site, reason in zip(["site-a", "site-b"], sorted(reasons), strict=True):
        assert reason.startswith(f"site {site} refuses to run: the hospital has not approved this code")
        assert code_digest() in reason
    assert not (tmp_path / "run" / "cache").exists()  # refused before any data was read
    assert not list((tmp_path / "run" / "state").glob("*/ledger.jsonl"))  # and before any spend


def test_simulated_sites_train_the_code_their_policy_lists(hospitals: Path, tmp_path: Path) -> None:
    results = federate(tmp_path / "run", hospitals, [OTHER, code_digest()])
    assert results["status"] == "completed"
    assert results["rounds"][0]["failures"] == []
    assert sorted(results["sites"]) == ["site-a", "site-b"]


# ------------------------------------------------------------------- before any bundle code runs


def test_the_guard_refuses_an_unapproved_bundle_before_installing_it(fab: bytes, tmp_path: Path) -> None:
    """fedmed.deploy.clientapp: the hospital's flwr-clientapp checks the FAB it received."""
    from fedmed.deploy.clientapp import approving

    marker = tmp_path / "imported"
    tampered = with_file(fab, "client/app.py", f"open({str(marker)!r}, 'w')\n".encode())
    installed: list[bytes] = []
    guarded = approving(lambda fab_file, **_: installed.append(fab_file), policy_path=write_policy(tmp_path, [
        fab_digest(fab)]), site="site-a")
    with pytest.raises(PrivacyError, match=r"site site-a refuses to run: the hospital has not approved this code"):
        guarded(tampered, skip_prompt=True)
    assert installed == [] and not marker.exists()
    guarded(fab, skip_prompt=True)
    assert installed == [fab]


def test_every_message_type_checks_approval(tmp_path: Path) -> None:
    """The review's finding: the secure-aggregation handler skipped the check."""
    node_config = {
        Key.SITE_ID: "site-a", Key.DATA_DIR: str(tmp_path / "no-data"), Key.STATE_DIR: str(tmp_path / "state"),
        Key.POLICY_PATH: str(write_policy(tmp_path, [OTHER])),
    }
    context = Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    for message_type in ("train", "train.secagg", "evaluate", "train.local_model", "evaluate.cross_site"):
        reply = client_app(Message(RecordDict(), dst_node_id=1, message_type=message_type), context)
        assert reply.has_error(), message_type
        assert "the hospital has not approved this code" in reply.error.reason, message_type
