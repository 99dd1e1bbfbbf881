"""Tests for fedmed.config: YAML in, frozen typed objects out; every problem named with file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedmed.config import (
    AccountantName,
    ExperimentConfig,
    StrategyName,
    load_config,
)
from fedmed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

MINIMAL = """\
name: test
data:
  root: data
  sites: [a, b]
training:
  rounds: 2
privacy:
  noise_multiplier: 1.0
"""


def write_config(folder: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str) -> str:
    """MINIMAL with one exact substring replaced (the substring must be there)."""
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1)


# ---------------------------------------------------------------- valid files


def test_quickstart_loads_and_resolves_root_next_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(QUICKSTART)
    assert isinstance(config, ExperimentConfig)
    assert config.name == "quickstart"
    assert config.data.root == (QUICKSTART.parent / "../data/quickstart").resolve()
    assert config.data.root.is_absolute()
    assert config.data.sites == ["site-a", "site-b", "site-c"]
    assert config.model.name == "small_cnn"
    assert config.training.strategy is StrategyName.FEDAVG
    assert config.privacy.accountant is AccountantName.PRV
    assert config.privacy.target_epsilon == 8.0 and config.privacy.noise_multiplier is None
    assert config.min_sites == 3  # default: every site


def test_quickstart_loads_from_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO / "configs")
    config = load_config("quickstart.yaml")
    assert config.data.root == (REPO / "data" / "quickstart").resolve()


def test_relative_paths_follow_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(
        tmp_path / "experiments" / "run1",
        MINIMAL.replace("root: data", "root: ../hospitals\n  cache_dir: cache"),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / path.relative_to(tmp_path))
    assert config.data.root == (tmp_path / "experiments" / "hospitals").resolve()
    assert config.data.cache_dir == (tmp_path / "experiments" / "run1" / "cache").resolve()


def test_absolute_root_is_kept_and_cache_dir_defaults_to_none(tmp_path: Path) -> None:
    absolute = tmp_path / "somewhere" / "hospitals"
    config = load_config(write_config(tmp_path, edit("root: data", f"root: {absolute}")))
    assert config.data.root == absolute
    assert config.data.cache_dir is None


def test_defaults_fill_optional_sections(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.model.name == "small_cnn"
    assert config.data.image_size == 64 and config.data.synthesize is None
    assert config.training.local_epochs == 1 and config.training.min_sites is None
    assert config.privacy.delta == 1e-5 and config.privacy.max_grad_norm == 1.0
    assert config.simulation.cpus_per_site == 1
    assert config.min_sites == 2


@pytest.mark.parametrize(
    "text, check",
    [
        # YAML reads 1e-5 (no dot) as a string; the schema still takes it as a float
        (MINIMAL + "  delta: 1e-5\n", lambda c: c.privacy.delta == 1e-5),
        (edit("noise_multiplier: 1.0", "target_epsilon: 3"), lambda c: c.privacy.target_epsilon == 3.0),
        (
            edit("rounds: 2", "rounds: 2\n  strategy: fedprox\n  proximal_mu: 0.01"),
            lambda c: c.training.strategy is StrategyName.FEDPROX and c.training.proximal_mu == 0.01,
        ),
        (edit("rounds: 2", "rounds: 2\n  min_sites: 2"), lambda c: c.min_sites == 2),
        (MINIMAL + "model:\n  name: densenet121\n", lambda c: c.model.name == "densenet121"),
        (MINIMAL + "  accountant: rdp\n", lambda c: c.privacy.accountant is AccountantName.RDP),
        (
            edit("sites: [a, b]", "sites: [a, b]\n  synthesize:\n    images_per_site: 40"),
            lambda c: c.data.synthesize is not None and c.data.synthesize.images_per_site == 40,
        ),
    ],
    ids=["delta-1e-5", "target-epsilon", "fedprox", "min-sites", "densenet", "rdp", "synthesize"],
)
def test_valid_variants(tmp_path: Path, text: str, check) -> None:  # noqa: ANN001
    assert check(load_config(write_config(tmp_path, text)))


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        config.training.rounds = 10  # type: ignore[misc]


# ---------------------------------------------------------------- invalid files

INVALID = [
    pytest.param(
        edit("rounds: 2", "rouns: 2\n  rounds: 2"),
        [r"training\.rouns: unknown key \(did you mean 'rounds'\?\)", r"allowed here: rounds, "],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        MINIMAL.replace("name: test", "name: test\nprivcy: {}"),
        [r"privcy: unknown key \(did you mean 'privacy'\?\); allowed here: name, task, data, model"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        edit("sites: [a, b]", "sites: [a, b]\n  synthesize:\n    image_per_site: 30"),
        [r"data\.synthesize\.image_per_site: unknown key \(did you mean 'images_per_site'\?\)"],
        id="unknown-nested-key",
    ),
    pytest.param(
        edit("rounds: 2", "rounds: five"),
        [r"training\.rounds: Input should be a valid integer"],
        id="wrong-type",
    ),
    pytest.param(
        edit("sites: [a, b]", "sites: a"),
        [r"data\.sites: Input should be a valid list"],
        id="wrong-type-list",
    ),
    pytest.param(
        MINIMAL.replace("training:\n  rounds: 2\n", "training: 5\n"),
        [r"training: Input should be a valid dictionary"],
        id="section-not-a-mapping",
    ),
    pytest.param(
        edit("rounds: 2", "local_epochs: 1"),
        [r"training\.rounds: Field required"],
        id="missing-required-key",
    ),
    pytest.param(
        MINIMAL.replace("name: test\n", ""),
        [r"\n  name: Field required"],
        id="missing-top-level-key",
    ),
    pytest.param(
        edit("rounds: 2", "rounds: 0"),
        [r"training\.rounds: Input should be greater than or equal to 1"],
        id="out-of-range",
    ),
    pytest.param(
        MINIMAL + "model:\n  name: densenet12\n",
        [
            r"model\.name: unknown model 'densenet12' \(did you mean 'densenet121'\?\)",
            r"available models: densenet121, densenet121_3d, segresnet, segresnet_3d, "
            r"small_cnn, small_cnn_3d, unet, unet_3d",
        ],
        id="unknown-model-did-you-mean",
    ),
    pytest.param(
        MINIMAL + "model:\n  name: resnet50\n",
        [
            r"model\.name: unknown model 'resnet50'",
            r"available models: densenet121, densenet121_3d, segresnet, segresnet_3d, "
            r"small_cnn, small_cnn_3d, unet, unet_3d",
        ],
        id="unknown-model",
    ),
    pytest.param(
        MINIMAL + "  target_epsilon: 3.0\n",
        [r"privacy: set exactly one of target_epsilon and noise_multiplier"],
        id="both-noise-sources",
    ),
    pytest.param(
        edit("noise_multiplier: 1.0", "delta: 1.0e-6"),
        [r"privacy: set exactly one of target_epsilon and noise_multiplier"],
        id="neither-noise-source",
    ),
    pytest.param(
        edit("rounds: 2", "rounds: 2\n  strategy: fedprox"),
        [r"training: strategy fedprox needs proximal_mu > 0"],
        id="fedprox-without-mu",
    ),
    pytest.param(
        edit("rounds: 2", "rounds: 2\n  strategy: fedprx"),
        [r"training\.strategy: Input should be 'fedavg' or 'fedprox'"],
        id="unknown-strategy",
    ),
    pytest.param(
        edit("sites: [a, b]", "sites: [a, b, a, c, b]"),
        [r"data\.sites: site names must be unique; repeated: a, b"],
        id="duplicate-sites",
    ),
    pytest.param(
        edit("sites: [a, b]", "sites: []"),
        [r"data\.sites: List should have at least 1 item"],
        id="no-sites",
    ),
    pytest.param(
        edit("rounds: 2", "rounds: 2\n  min_sites: 3"),
        [r"training\.min_sites is 3 but data\.sites lists only 2 site\(s\)"],
        id="min-sites-over-site-count",
    ),
]


@pytest.mark.parametrize("text, patterns", INVALID)
def test_invalid_file_names_file_and_key(tmp_path: Path, text: str, patterns: list[str]) -> None:
    path = write_config(tmp_path, text, name="bad-experiment.yaml")
    with pytest.raises(ConfigError, match=patterns[0]) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid configuration\n")
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)


@pytest.mark.parametrize(
    "text, pattern",
    [
        (edit("sites: [a, b]", "sites: [a, b"), r": line 5, column \d+: malformed YAML: "),
        (MINIMAL + "  max_grad_norm: : 1\n", r": line 9, column \d+: malformed YAML: "),
        (MINIMAL + "\tdelta: 1.0e-6\n", r": line 9, column 1: malformed YAML: .*'\\t'"),
    ],
    ids=["unclosed-list", "double-colon", "tab"],
)
def test_malformed_yaml_names_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + pattern):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: config file not found")):
        load_config(path)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: config file not found")):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text", ["- name: test\n- rounds: 2\n", "just a string\n", "42\n", "", "# only a comment\n"]
)
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: expected a mapping of keys at the top level")):
        load_config(path)


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.replace("name: test", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read config file")):
        load_config(path)


def test_several_errors_in_one_message(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("sites: [a, b]", "sites: [a, a]")
        .replace("rounds: 2", "rounds: -1\n  batchsize: 3")
        .replace("noise_multiplier: 1.0", "noise_multiplier: 1.0\n  target_epsilon: 2.0")
        + "model:\n  name: resnet\n"
    )
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.count(str(path)) == 1  # one error, one header naming the file
    for pattern in [
        r"data\.sites: site names must be unique; repeated: a",
        r"training\.rounds: Input should be greater than or equal to 1",
        r"training\.batchsize: unknown key \(did you mean 'batch_size'\?\)",
        r"privacy: set exactly one of target_epsilon and noise_multiplier",
        r"model\.name: unknown model 'resnet'",
    ]:
        assert re.search(pattern, message), (pattern, message)
    assert len(message.splitlines()) == 6  # header + five problems


@pytest.mark.xfail(
    reason=(
        "known limitation: ExperimentConfig._min_sites_fit is a model 'after' validator, which pydantic "
        "skips when any field of the file is invalid, so a min_sites error is only reported once "
        "every other error is fixed (not 'all problems in one error')"
    ),
    strict=True,
)
def test_min_sites_error_reported_together_with_other_errors(tmp_path: Path) -> None:
    text = MINIMAL.replace("rounds: 2", "rounds: 2\n  min_sites: 3").replace("name: test", "name: test\nfoo: 1")
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "foo: unknown key" in message
    assert "training.min_sites is 3" in message


def test_the_3d_quickstart_loads_as_volumes() -> None:
    config = load_config(REPO / "configs" / "quickstart-3d.yaml")
    assert config.data.sample == "series" and config.data.spatial_shape == (8, 32, 32)
    assert config.data.volume.window == (-600.0, 1500.0) and config.model.name == "small_cnn_3d"
    assert config.data.synthesize is not None and config.data.synthesize.kind == "ct-series"


def test_the_3d_segmentation_quickstart_loads_as_seg_volumes() -> None:
    config = load_config(REPO / "configs" / "quickstart-segmentation-3d.yaml")
    assert config.task.kind == "segmentation" and config.task.structures == ("lesion",)
    assert config.data.sample == "series" and config.data.spatial_shape == (16, 32, 32)
    assert config.model.name == "unet_3d" and config.privacy.target_epsilon == 8.0
    assert config.data.synthesize is not None and config.data.synthesize.kind == "ct-segmentation"
    assert config.privacy.delta < 1 / config.data.synthesize.images_per_site  # so below 1/N at every site
    assert config.data.root == (REPO / "data" / "quickstart-segmentation-3d").resolve()


@pytest.mark.parametrize(
    ("data", "model", "pattern"),
    [
        ("sample: series", "small_cnn", r"model small_cnn takes 2-D input but data.sample is series \(3-D\)"),
        ("sample: image", "small_cnn_3d", r"model small_cnn_3d takes 3-D input but data.sample is image \(2-D\)"),
        ("sample: series\n  channels: 3", "small_cnn_3d", r"grayscale CT/MR volumes; set channels: 1"),
    ],
)
def test_a_network_must_match_the_sample_unit(tmp_path: Path, data: str, model: str, pattern: str) -> None:
    path = write_config(tmp_path, f"""
name: volumes
data:
  root: hospitals
  sites: [a]
  {data}
model: {{name: {model}}}
training: {{rounds: 1}}
privacy: {{target_epsilon: 1.0}}
""")
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)
