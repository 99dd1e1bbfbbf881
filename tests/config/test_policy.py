"""Tests for fedmed.config.policy: a hospital's own policy file, read and checked before any round."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedmed.config import AccountantName, SitePolicy, load_site_policy
from fedmed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "site-policy.yaml"

MINIMAL = """\
max_epsilon: 8.0
delta: 1.0e-5
max_grad_norm: 1.0
min_noise_multiplier: 0.5
"""


def write_policy(folder: Path, text: str, name: str = "site-policy.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str) -> str:
    """MINIMAL with one exact substring replaced (the substring must be there)."""
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1)


# ---------------------------------------------------------------- valid files


def test_shipped_policy_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    policy = load_site_policy(SHIPPED)
    assert isinstance(policy, SitePolicy)
    assert policy.max_epsilon == 12.0  # epsilon 8 and local-only models: 11.35 (2-D), 11.83 (3-D)
    assert policy.min_cell_size == 10 and policy.share_local_model
    assert policy.delta == 1e-5
    assert policy.accountant is AccountantName.PRV
    assert policy.max_grad_norm == 1.0
    assert policy.min_noise_multiplier == 0.5
    assert policy.allowed_models == ["small_cnn", "densenet121", "small_cnn_3d", "unet", "unet_3d"]
    assert policy.max_local_epochs == 5


def test_shipped_policy_loads_from_a_string_path() -> None:
    assert load_site_policy(str(SHIPPED)) == load_site_policy(SHIPPED)


def test_defaults(tmp_path: Path) -> None:
    policy = load_site_policy(write_policy(tmp_path, MINIMAL))
    assert policy.accountant is AccountantName.PRV
    assert policy.allowed_models is None  # every registered model
    assert policy.max_local_epochs is None  # no limit


@pytest.mark.parametrize(
    "text, check",
    [
        (MINIMAL + "accountant: rdp\n", lambda p: p.accountant is AccountantName.RDP),
        (MINIMAL + "allowed_models: [densenet121]\n", lambda p: p.allowed_models == ["densenet121"]),
        (MINIMAL + "allowed_models: []\n", lambda p: p.allowed_models == []),
        (MINIMAL + "allowed_models: null\n", lambda p: p.allowed_models is None),
        (MINIMAL + "max_local_epochs: 1\n", lambda p: p.max_local_epochs == 1),
        (edit("delta: 1.0e-5", "delta: 1e-5"), lambda p: p.delta == 1e-5),  # YAML string, still a float
        (edit("max_epsilon: 8.0", "max_epsilon: 3"), lambda p: p.max_epsilon == 3.0),
    ],
    ids=["rdp", "one-model", "no-models", "models-null", "one-epoch", "delta-1e-5", "int-epsilon"],
)
def test_valid_variants(tmp_path: Path, text: str, check) -> None:  # noqa: ANN001
    assert check(load_site_policy(write_policy(tmp_path, text)))


def test_policy_is_frozen() -> None:
    policy = load_site_policy(SHIPPED)
    with pytest.raises(ValidationError, match="frozen"):
        policy.max_epsilon = 100.0  # type: ignore[misc]


# ---------------------------------------------------------------- invalid files

INVALID = [
    pytest.param(
        MINIMAL + "max_epsilom: 9.0\n",
        [r"max_epsilom: unknown key \(did you mean 'max_epsilon'\?\)", r"allowed here: max_epsilon, delta, "],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        MINIMAL + "max_local_epoch: 3\n",
        [r"max_local_epoch: unknown key \(did you mean 'max_local_epochs'\?\)"],
        id="unknown-key-did-you-mean-2",
    ),
    pytest.param(
        MINIMAL.replace("max_epsilon: 8.0\n", ""),
        [r"\n  max_epsilon: Field required"],
        id="missing-max-epsilon",
    ),
    pytest.param(
        MINIMAL.replace("min_noise_multiplier: 0.5\n", ""),
        [r"\n  min_noise_multiplier: Field required"],
        id="missing-min-noise",
    ),
    pytest.param(
        edit("delta: 1.0e-5", "delta: 1.0"),
        [r"\n  delta: Input should be less than 1"],
        id="delta-one",
    ),
    pytest.param(
        edit("delta: 1.0e-5", "delta: 2.5"),
        [r"\n  delta: Input should be less than 1"],
        id="delta-above-one",
    ),
    pytest.param(
        edit("delta: 1.0e-5", "delta: 0"),
        [r"\n  delta: Input should be greater than 0"],
        id="delta-zero",
    ),
    pytest.param(
        edit("min_noise_multiplier: 0.5", "min_noise_multiplier: -0.5"),
        [r"\n  min_noise_multiplier: Input should be greater than 0"],
        id="negative-min-noise",
    ),
    pytest.param(
        edit("max_epsilon: 8.0", "max_epsilon: 0"),
        [r"\n  max_epsilon: Input should be greater than 0"],
        id="zero-max-epsilon",
    ),
    pytest.param(
        edit("max_grad_norm: 1.0", "max_grad_norm: -1"),
        [r"\n  max_grad_norm: Input should be greater than 0"],
        id="negative-clip-norm",
    ),
    pytest.param(
        MINIMAL + "max_local_epochs: 0\n",
        [r"\n  max_local_epochs: Input should be greater than or equal to 1"],
        id="zero-local-epochs",
    ),
    pytest.param(
        MINIMAL + "accountant: gdp\n",
        [r"\n  accountant: Input should be 'prv' or 'rdp'"],
        id="unknown-accountant",
    ),
    pytest.param(
        edit("max_epsilon: 8.0", "max_epsilon: lots"),
        [r"\n  max_epsilon: Input should be a valid number"],
        id="wrong-type",
    ),
    pytest.param(
        MINIMAL + "allowed_models: small_cnn\n",
        [r"\n  allowed_models: Input should be a valid list"],
        id="models-not-a-list",
    ),
]


@pytest.mark.parametrize("text, patterns", INVALID)
def test_invalid_policy_names_file_and_key(tmp_path: Path, text: str, patterns: list[str]) -> None:
    path = write_policy(tmp_path, text, name="bad-policy.yaml")
    with pytest.raises(ConfigError, match=patterns[0]) as caught:
        load_site_policy(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid configuration\n")
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)


@pytest.mark.parametrize(
    "models, pattern",
    [
        (
            "[small_cnn, densenet12]",
            r": invalid configuration\n  allowed_models: unknown model 'densenet12' \(did you mean 'densenet121'\?\); "
            r"available models: densenet121, densenet121_3d, segresnet, segresnet_3d, "
            r"small_cnn, small_cnn_3d, unet, unet_3d$",
        ),
        (
            "[vgg16]",
            r": invalid configuration\n  allowed_models: unknown model 'vgg16'; "
            r"available models: densenet121, densenet121_3d, segresnet, segresnet_3d, "
            r"small_cnn, small_cnn_3d, unet, unet_3d$",
        ),
    ],
    ids=["did-you-mean", "no-close-match"],
)
def test_unknown_allowed_model_lists_available(tmp_path: Path, models: str, pattern: str) -> None:
    path = write_policy(tmp_path, MINIMAL + f"allowed_models: {models}\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + pattern):
        load_site_policy(path)


def test_several_errors_in_one_message(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("max_epsilon: 8.0\n", "")
        .replace("delta: 1.0e-5", "delta: 1.5")
        .replace("min_noise_multiplier: 0.5", "min_noise_multiplier: -1\naccountant: prb")
    )
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_site_policy(path)
    message = str(caught.value)
    assert message.count(str(path)) == 1
    for pattern in [
        r"max_epsilon: Field required",
        r"delta: Input should be less than 1",
        r"min_noise_multiplier: Input should be greater than 0",
        r"accountant: Input should be 'prv' or 'rdp'",
    ]:
        assert re.search(pattern, message), (pattern, message)
    assert len(message.splitlines()) == 5  # header + four problems


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("allowed_models: [resnet50, vgg16]\n", ["'resnet50'", "'vgg16'"]),
        ("allowed_models: [resnet50]\nfoo: 1\n", ["'resnet50'", "foo: unknown key"]),
    ],
    ids=["two-unknown-models", "unknown-model-and-unknown-key"],
)
def test_every_policy_problem_reported_together(tmp_path: Path, extra: str, expected: list[str]) -> None:
    path = write_policy(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as caught:
        load_site_policy(path)
    message = str(caught.value)
    for text in expected:
        assert text in message, (text, message)


@pytest.mark.parametrize(
    "text, pattern",
    [
        (MINIMAL + "allowed_models: [small_cnn\n", r": line \d+, column \d+: malformed YAML: "),
        (MINIMAL + "delta: : 1\n", r": line 5, column \d+: malformed YAML: "),
        (MINIMAL + "\tmax_local_epochs: 2\n", r": line 5, column 1: malformed YAML: .*'\\t'"),
    ],
    ids=["unclosed-list", "double-colon", "tab"],
)
def test_malformed_yaml_names_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + pattern):
        load_site_policy(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "no-policy.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: config file not found")):
        load_site_policy(path)


@pytest.mark.parametrize("text", ["- max_epsilon: 8\n", "8.0\n", ""])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: expected a mapping of keys at the top level")):
        load_site_policy(path)
