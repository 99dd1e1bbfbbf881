"""The one path from a YAML file to a typed ExperimentConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedmed.config.schema import ExperimentConfig
from fedmed.errors import ConfigError, did_you_mean

Schema = TypeVar("Schema", bound=BaseModel)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read, validate and resolve an experiment file.

    Relative paths inside the file are taken relative to the file's own folder, so a
    config means the same thing whatever the working directory.

    Raises:
        ConfigError: the file is missing or malformed, or any key is unknown or invalid;
            the message names the file and every offending key.
    """
    path = Path(path)
    return resolve_paths(load_yaml_as(path, ExperimentConfig), path.resolve().parent)


def load_yaml_as(path: Path, schema: type[Schema], *, context: dict[str, Any] | None = None) -> Schema:
    """Parse ``path`` and validate it against ``schema``, every problem in one ConfigError."""
    raw = read_yaml_mapping(path)
    try:
        return schema.model_validate(raw, context=context)
    except ValidationError as error:
        raise ConfigError(format_validation_error(path, error, schema)) from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse ``path`` as a YAML mapping, turning every failure into a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (check the path)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}, column {where.column + 1}:" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}:{line} malformed YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return raw


def absolute_path(value: Path, base: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def format_validation_error(path: Path, error: ValidationError, schema: type[BaseModel]) -> str:
    """One message naming the file and every invalid key, with a hint for typos."""
    lines = [f"{path}: invalid configuration"]
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        key = ".".join(location) or "(top level)"
        if problem["type"] == "extra_forbidden":
            options = _known_keys(schema, location[:-1])
            hint = did_you_mean(location[-1], options)
            lines.append(f"  {key}: unknown key{hint}; allowed here: {', '.join(options)}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _known_keys(schema: type[BaseModel], parents: list[str]) -> list[str]:
    """The field names valid under the dotted location ``parents``."""
    model: Any = schema
    for name in parents:
        field = model.model_fields.get(name) if isinstance(model, type) else None
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def resolve_paths(config: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Make every path absolute relative to ``base`` (the config file's folder)."""

    def absolute(value: Path | None) -> Path | None:
        return None if value is None else absolute_path(value, base)

    data = config.data.model_copy(
        update={"root": absolute(config.data.root), "cache_dir": absolute(config.data.cache_dir)}
    )
    simulation = config.simulation.model_copy(
        update={
            "site_policy": absolute(config.simulation.site_policy),
            "site_policies": {site: absolute(p) for site, p in config.simulation.site_policies.items()},
            "state_root": absolute(config.simulation.state_root),
        }
    )
    return config.model_copy(update={"data": data, "simulation": simulation})
