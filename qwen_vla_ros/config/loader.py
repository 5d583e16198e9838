"""Load YAML into the typed config models with errors a person can act on.

A validation failure becomes a :class:`ConfigError` whose lines each name the file, the
field path (``arms[0].joints[2].limits``) and the offending value, so a wrong config is
fixed from the message alone.

A config is read as untrusted input: the file size, the nesting depth and the number of
values its aliases expand to are bounded before anything walks the data, so a hostile file
("billion laughs") is refused at once instead of exhausting memory in validation or in an
error message (docs/architecture.md, configuration validation).
"""
from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.runtime import RuntimeConfig
from qwen_vla_ros.config.urdf import urdf_limit_problems
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.paths import config_dir

ModelT = TypeVar("ModelT", bound=BaseModel)

YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML was built with it: parsing a 10 KB config takes ~250 ms in pure
Python on a loaded 2-core host. Same safe constructor, so the same values and shared aliases."""

EMBODIMENTS = ("aloha", "widowx", "mobile_base", "aloha_mobile")

MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (the shipped ones are about 10 KB)."""
MAX_CONFIG_VALUES = 100_000
"""Most values (mappings, lists and scalars) a document may hold once its aliases are expanded;
the shipped ones hold about 2000. Validation and error messages walk the expanded tree."""
MAX_CONFIG_DEPTH = 32
"""Deepest nesting of mappings and lists (the shipped files reach 6). Building the values of a
deeper document recurses once per level: libyaml's composer overflowed the C stack (a crash,
not an error) on 50 000 nested lists, and PyYAML's took 12 s to raise RecursionError."""


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


_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxlevel = 3
_BOUNDED_REPR.maxlist = _BOUNDED_REPR.maxtuple = _BOUNDED_REPR.maxdict = 8
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = 80


def _short(value: Any, limit: int = 80) -> str:
    """A repr cut to ``limit`` characters, built without the full text of a huge value."""
    text = _BOUNDED_REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def data_location(location: Iterable[str | int], data: Any) -> tuple[str | int, ...]:
    """The part of pydantic's error location that exists in the data: a discriminated union
    adds its tag ('sim', 'mujoco_aloha', 'camera_rate_hz'), which no YAML key spells.
    A last part that is absent stays: it is the missing field."""
    parts = list(location)
    kept: list[str | int] = []
    node = data
    for index, part in enumerate(parts):
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(part)
            node = node[part]
        elif isinstance(node, dict) and part in node:
            kept.append(part)
            node = node[part]
        elif index == len(parts) - 1:
            kept.append(part)
    return tuple(kept)


def describe_validation_error(error: ValidationError, data: Any = None) -> list[str]:
    """One line per fault: field path, message and a bounded quote of the value. With the
    validated ``data`` the path is the one written in the YAML, union tags left out."""
    problems = []
    for item in error.errors(include_url=False):
        where = format_location(item["loc"] if data is None else data_location(item["loc"], data))
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check across sections: its message names the fields
            problems.append(message)
        elif item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field (value {_short(item['input'])})")
        elif isinstance(item["input"], dict):
            problems.append(f"{where}: {message}")
        else:
            problems.append(f"{where}: {message} (got {_short(item['input'])})")
    return problems


def expanded_size(value: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> int:
    """Count the values ``value`` holds with every alias expanded, refusing more than ``limit``.

    PyYAML builds an aliased node once and shares it, so loading a "billion laughs" file is
    cheap; whatever walks the result afterwards (validation, copying, error messages) pays for
    every expansion. Sizes are memoised per shared object, so this costs one visit per
    distinct node however far the aliases expand, and a recursive alias is refused.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(source, ["a YAML alias refers to a node that contains it (recursive document)"])
        open_nodes.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1 + len(node) * isinstance(node, dict) + sum(size(child) for child in children)
        open_nodes.discard(key)
        if total > limit:
            raise ConfigError(
                source, [f"the document expands to more than {limit} values through its YAML aliases; refused"]
            )
        sizes[key] = total
        return total

    return size(value)


def _check_nesting(text: str, source: str) -> None:
    """Refuse a document nested deeper than :data:`MAX_CONFIG_DEPTH`, from the parser's event
    stream: libyaml's parser keeps its own stack, so this pass cannot overflow."""
    depth = 0
    for event in yaml.parse(text, Loader=YamlLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(source, [f"the document nests deeper than {MAX_CONFIG_DEPTH} levels; refused"])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def load_yaml_text(text: str, source: str) -> Any:
    """Parse untrusted YAML text with bounded size, nesting and alias expansion."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"{len(text)} characters; a config holds at most {MAX_CONFIG_BYTES}"])
    try:
        _check_nesting(text, source)
        data = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    expanded_size(data, source)
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, dropping top-level ``x-`` extension keys."""
    if not path.is_file():
        raise ConfigError(str(path), ["file does not exist"])
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"file is {size} bytes; a config file holds at most {MAX_CONFIG_BYTES}"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from exc
    data = load_yaml_text(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    # Top-level "x-" keys only hold YAML anchors (shared limits, kinematics) for reuse below.
    return {k: v for k, v in data.items() if not str(k).startswith("x-")}


def _unshared(value: Any) -> Any:
    """A copy in which no two places share an object, so an override changes only its own path
    (a YAML anchor makes every alias the same object; ``copy.deepcopy`` would keep that)."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def _override_parts(dotted: str) -> list[str | int]:
    """'arms.0.namespace' -> ['arms', 0, 'namespace'], for :func:`format_location`."""
    return [int(part) if part.isdigit() else part for part in dotted.split(".")]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> str | None:
    """Set one dotted key; a missing mapping on the way is created (the model may default it),
    a missing list index is not. Returns what is wrong, or None."""
    node: Any = data
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = format_location(_override_parts(".".join(parts[:depth])))
        key: str | int
        if isinstance(node, list):
            if not part.isdigit():
                return f"{where} is a list, and {part!r} is not an index"
            if int(part) >= len(node):
                return f"{where} has {len(node)} entries, so index {part} does not exist"
            key = int(part)
        elif isinstance(node, dict):
            key = part
            if depth < len(parts) - 1:
                node.setdefault(part, {})
        else:
            return f"{where} is a single value ({_short(node)}), it has no field {part!r}"
        if depth == len(parts) - 1:
            node[key] = value
        else:
            node = node[key]
    return None


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], source: str = "override") -> dict[str, Any]:
    """Set dotted keys, e.g. {'control.rate_hz': 100, 'arms.0.namespace': 'puppet_left'}."""
    result = _unshared(data)
    problems = []
    for dotted, value in overrides.items():
        problem = _set_dotted(result, dotted, value)
        if problem is not None:
            problems.append(f"override {dotted}: {problem}")
    if problems:
        raise ConfigError(source, problems)
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """'control.rate_hz=100' -> ('control.rate_hz', 100); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("override", [f"expected KEY=VALUE, got {_short(text)}"])
    return key.strip(), load_yaml_text(value, f"override {key.strip()}")


def _name_unknown_override(where: str, overrides: Iterable[str]) -> str | None:
    """One line naming the override that introduced the unknown field ``where``, or None if none did."""
    for dotted in overrides:
        path = format_location(_override_parts(dotted))
        if path == where or path.startswith((f"{where}.", f"{where}[")):
            return f"override {dotted}: {where} is not a field of this config"
    return None


def validate(
    model: type[ModelT], data: Mapping[str, Any], source: str, overrides: Iterable[str] = ()
) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, data)
        overrides = list(overrides)
        for index, item in enumerate(exc.errors(include_url=False)):
            if item["type"] == "extra_forbidden":
                where = format_location(data_location(item["loc"], data))
                problems[index] = _name_unknown_override(where, overrides) or problems[index]
        raise ConfigError(source, problems) from exc


def resolve_embodiment_path(name_or_path: str | Path) -> Path:
    """A shipped embodiment name ('aloha') or a path to a YAML file."""
    text = str(name_or_path)
    if text in EMBODIMENTS:
        return config_dir() / f"{text}.yaml"
    return Path(text).expanduser()


def validate_embodiment(data: Mapping[str, Any], source: str, overrides: Iterable[str] = ()) -> EmbodimentConfig:
    """The model's checks, then the joint limits against the URDF the config names."""
    config = validate(EmbodimentConfig, data, source, overrides)
    problems = urdf_limit_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_embodiment(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> EmbodimentConfig:
    path = resolve_embodiment_path(name_or_path)
    overrides = overrides or {}
    data = apply_overrides(read_yaml(path), overrides, str(path))
    return validate_embodiment(data, str(path), overrides)


def load_runtime(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RuntimeConfig:
    """The shipped runtime.yaml when ``path`` is None."""
    source = Path(path).expanduser() if path else config_dir() / "runtime.yaml"
    overrides = overrides or {}
    data = apply_overrides(read_yaml(source), overrides, str(source))
    return validate(RuntimeConfig, data, str(source), overrides)


def validate_config(
    data: dict[str, Any], source: str, overrides: Mapping[str, Any] | None = None
) -> EmbodimentConfig | RuntimeConfig:
    """An embodiment or a runtime file, told apart by its keys (embodiments have an action space).

    Files of layers above config (OOD protocols) are told apart by whoever may import both:
    the ``check-config`` command.
    """
    overrides = overrides or {}
    data = apply_overrides(data, overrides, source)
    if "action" in data or "arms" in data or "prompt" in data:
        return validate_embodiment(data, source, overrides)
    return validate(RuntimeConfig, data, source, overrides)
