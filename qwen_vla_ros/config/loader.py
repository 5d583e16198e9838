"""Load YAML into the typed config models with errors a person can act on.

A validation failure becomes a :class:`ConfigError` whose lines each name the file, the
field path (``arms[0].joints[2].limits``) and the offending value, so a wrong config is
fixed from the message alone.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.runtime import RuntimeConfig
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.paths import config_dir

ModelT = TypeVar("ModelT", bound=BaseModel)

EMBODIMENTS = ("aloha", "widowx", "mobile_base", "aloha_mobile")


class ConfigError(QwenVlaError, ValueError):
    """A config file could not be read or is invalid; ``problems`` holds one line per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n" + "\n".join(f"  - {p}" for p in problems))


def format_location(location: Iterable[str | int]) -> str:
    """('arms', 0, 'joints', 2) -> 'arms[0].joints[2]'; union tags are dropped."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("function-") or part in {"MeanStd", "Quantiles"}:
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        where = format_location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field (value {_short(item['input'])})")
        elif isinstance(item["input"], dict):
            problems.append(f"{where}: {message}")
        else:
            problems.append(f"{where}: {message} (got {_short(item['input'])})")
    return problems


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, dropping top-level ``x-`` extension keys."""
    if not path.is_file():
        raise ConfigError(str(path), ["file does not exist"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    # Top-level "x-" keys only hold YAML anchors (shared limits, kinematics) for reuse below.
    return {k: v for k, v in data.items() if not str(k).startswith("x-")}


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys, e.g. {'control.rate_hz': 100, 'arms.0.namespace': 'puppet_left'}."""
    result = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node: Any = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """'control.rate_hz=100' -> ('control.rate_hz', 100); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError("override", [f"expected KEY=VALUE, got {text!r}"])
    return key.strip(), yaml.safe_load(value)


def validate(model: type[ModelT], data: Mapping[str, Any], source: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, describe_validation_error(exc)) from exc


def resolve_embodiment_path(name_or_path: str | Path) -> Path:
    """A shipped embodiment name ('aloha') or a path to a YAML file."""
    text = str(name_or_path)
    if text in EMBODIMENTS:
        return config_dir() / f"{text}.yaml"
    return Path(text).expanduser()


def load_embodiment(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> EmbodimentConfig:
    path = resolve_embodiment_path(name_or_path)
    data = apply_overrides(read_yaml(path), overrides or {})
    return validate(EmbodimentConfig, data, str(path))


def load_runtime(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RuntimeConfig:
    """The shipped runtime.yaml when ``path`` is None."""
    source = Path(path).expanduser() if path else config_dir() / "runtime.yaml"
    data = apply_overrides(read_yaml(source), overrides or {})
    return validate(RuntimeConfig, data, str(source))


def detect_kind(data: Mapping[str, Any]) -> type[BaseModel]:
    """Embodiment files have an action space, OOD protocols have factors; runtime files neither."""
    if "factors" in data:
        from qwen_vla_ros.recording.protocol import Protocol  # recording builds on config, not the reverse

        return Protocol
    return EmbodimentConfig if "action" in data or "arms" in data or "prompt" in data else RuntimeConfig


def load_any(path: str | Path) -> BaseModel:
    source = Path(path).expanduser()
    data = read_yaml(source)
    return validate(detect_kind(data), data, str(source))
