"""Out-of-distribution evaluation protocols: factors, their levels, and the order trials run in.

A protocol names the factors an evaluation varies (layout, background, lighting, objects,
embodiment, ...) and how many trials each condition gets. The recorder walks the schedule
and announces the next condition; only trials that reached a verdict (success or failure)
use up a slot, so an aborted or crashed trial is run again rather than silently missing
from the table.
"""
from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from qwen_vla_ros.config.base import StrictModel, require_unique
from qwen_vla_ros.config.loader import read_yaml, validate
from qwen_vla_ros.config.sim import AlohaRandomization
from qwen_vla_ros.errors import InvalidArgumentError

Condition = dict[str, str]
"""factor name -> level name, in the protocol's factor order."""


class Level(StrictModel):
    """One level of a factor; ``instruction`` replaces the protocol's when this level is run
    (e.g. an unseen object needs its own instruction). ``sim`` sets fields of the MuJoCo
    sim's ``randomization`` for trials at this level (``qwen-vla-ros eval`` applies them;
    on a real robot the operator sets the scene up instead)."""

    name: str = Field(min_length=1)
    instruction: str | None = None
    description: str = ""
    sim: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sim")
    @classmethod
    def _known_sim_fields(cls, sim: dict[str, Any]) -> dict[str, Any]:
        AlohaRandomization.model_validate({**AlohaRandomization().model_dump(), **sim})
        return sim


class Factor(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    levels: list[Level] = Field(min_length=1)
    description: str = ""

    @field_validator("levels", mode="before")
    @classmethod
    def _plain_names(cls, levels: Any) -> Any:
        """Levels are usually just names; a mapping adds an instruction or a description."""
        if isinstance(levels, list):
            return [{"name": level} if isinstance(level, str) else level for level in levels]
        return levels

    @field_validator("levels")
    @classmethod
    def _unique_levels(cls, levels: list[Level]) -> list[Level]:
        require_unique([level.name for level in levels], "level names")
        return levels

    @property
    def level_names(self) -> list[str]:
        return [level.name for level in self.levels]


class Protocol(StrictModel):
    """``design`` picks the conditions: ``factorial`` crosses every level of every factor;
    ``one_at_a_time`` starts from the baseline (each factor's first level) and varies one
    factor at a time, as OOD tables usually do; ``explicit`` runs exactly ``conditions``.
    ``order`` runs each condition's trials back to back (``sequential``), one trial of each
    condition per round (``round_robin``), or in a seeded random order (``shuffled``)."""

    name: str = Field(min_length=1)
    description: str = ""
    task: str = ""
    instruction: str = ""
    factors: list[Factor] = Field(default_factory=list)
    design: Literal["factorial", "one_at_a_time", "explicit"] = "factorial"
    conditions: list[dict[str, str]] = Field(default_factory=list, description="the conditions of an explicit design")
    trials_per_condition: int = Field(ge=1)
    order: Literal["sequential", "round_robin", "shuffled"] = "sequential"
    seed: int = 0

    @field_validator("factors")
    @classmethod
    def _unique_factors(cls, factors: list[Factor]) -> list[Factor]:
        require_unique([factor.name for factor in factors], "factor names")
        return factors

    @model_validator(mode="after")
    def _design_is_complete(self) -> Protocol:
        if self.design == "explicit":
            if not self.conditions:
                raise ValueError("design 'explicit' needs a non-empty 'conditions' list")
            for index, condition in enumerate(self.conditions):
                try:
                    self.check_condition(condition)
                except InvalidArgumentError as exc:
                    raise ValueError(f"conditions[{index}]: {exc}") from None
            keys = [condition_key(self.check_condition(c)) for c in self.conditions]
            if len(set(keys)) != len(keys):
                raise ValueError("conditions must be distinct")
        elif self.conditions:
            raise ValueError(f"'conditions' is only used by design 'explicit', not {self.design!r}")
        return self

    def factor(self, name: str) -> Factor:
        for factor in self.factors:
            if factor.name == name:
                return factor
        raise KeyError(f"protocol {self.name!r} has no factor {name!r}; factors: {[f.name for f in self.factors]}")

    def check_condition(self, condition: Mapping[str, str]) -> Condition:
        """A full condition in factor order, or InvalidArgumentError naming the unknown factor or level."""
        known = {f.name: f for f in self.factors}
        unknown = sorted(set(condition) - set(known))
        if unknown:
            raise InvalidArgumentError(f"unknown factors {unknown}; the protocol's factors are {sorted(known)}")
        missing = [name for name in known if name not in condition]
        if missing:
            raise InvalidArgumentError(f"condition sets no level for factors {missing}")
        for name, level in condition.items():
            if level not in known[name].level_names:
                raise InvalidArgumentError(f"factor {name!r} has no level {level!r}; levels: {known[name].level_names}")
        return {f.name: str(condition[f.name]) for f in self.factors}

    def condition_list(self) -> list[Condition]:
        if self.design == "explicit":
            return [self.check_condition(c) for c in self.conditions]
        if self.design == "factorial":
            names = [f.name for f in self.factors]
            return [dict(zip(names, levels, strict=True)) for levels in itertools.product(*(f.level_names for f in self.factors))]
        baseline = {f.name: f.level_names[0] for f in self.factors}
        varied = [{**baseline, f.name: level} for f in self.factors for level in f.level_names[1:]]
        return [baseline, *varied]

    def schedule(self) -> list[Condition]:
        """Every trial slot of the protocol, in the order they are run."""
        conditions = self.condition_list()
        repeats = self.trials_per_condition
        if self.order == "sequential":
            return [c for c in conditions for _ in range(repeats)]
        rounds = [c for _ in range(repeats) for c in conditions]
        if self.order == "shuffled":
            random.Random(self.seed).shuffle(rounds)
        return rounds

    def sim_for(self, condition: Mapping[str, str]) -> dict[str, Any]:
        """The sim randomisation fields the condition's levels set; a later factor wins a clash."""
        fields: dict[str, Any] = {}
        for factor in self.factors:
            for level in factor.levels:
                if condition.get(factor.name) == level.name:
                    fields.update(level.sim)
        return fields

    def instruction_for(self, condition: Mapping[str, str]) -> str:
        """The first level (in factor order) that sets an instruction wins over the protocol's."""
        for factor in self.factors:
            for level in factor.levels:
                if condition.get(factor.name) == level.name and level.instruction:
                    return level.instruction
        return self.instruction


def condition_key(condition: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(condition.items()))


@dataclass(frozen=True)
class NextTrial:
    """What the operator should set up next; ``slot`` counts from 1 over the whole schedule."""

    condition: Condition
    instruction: str
    slot: int
    total: int
    completed: int

    def to_dict(self, protocol: str) -> dict[str, Any]:
        return {
            "protocol": protocol,
            "slot": self.slot,
            "total": self.total,
            "completed": self.completed,
            "remaining": self.total - self.completed,
            "condition": self.condition,
            "instruction": self.instruction,
            "done": False,
        }


def next_trial(protocol: Protocol, completed: Iterable[Mapping[str, str]]) -> NextTrial | None:
    """The first schedule slot not yet filled by a completed trial of its condition.

    ``completed`` lists the conditions of trials that reached a verdict; trials with other
    conditions (e.g. set by hand outside the protocol) are ignored. None when all are done.
    """
    done = Counter(condition_key(c) for c in completed)
    schedule = protocol.schedule()
    slots = Counter(condition_key(c) for c in schedule)
    filled = sum(min(done[key], count) for key, count in slots.items())
    for slot, condition in enumerate(schedule, start=1):
        key = condition_key(condition)
        if done[key] > 0:
            done[key] -= 1
            continue
        return NextTrial(condition, protocol.instruction_for(condition), slot, len(schedule), filled)
    return None


def is_protocol(data: Mapping[str, Any]) -> bool:
    """Whether YAML data is a protocol file (it has factors) rather than a config file."""
    return "factors" in data


def summarize_protocol(protocol: Protocol) -> str:
    """One-screen summary for ``check-config``."""
    conditions = protocol.condition_list()
    lines = [
        f"protocol     {protocol.name}  (task {protocol.task or '-'})",
        f"design       {protocol.design}, {len(conditions)} conditions x {protocol.trials_per_condition} trials "
        f"= {len(protocol.schedule())} trials, order {protocol.order}",
        f"instruction  {protocol.instruction}",
    ]
    lines += [f"factor       {f.name}: {', '.join(f.level_names)}" for f in protocol.factors]
    return "\n".join(lines)


def load_protocol(path: str | Path) -> Protocol:
    """Raises ConfigError with one line per fault (field path and value)."""
    source = Path(path).expanduser()
    return validate(Protocol, read_yaml(source), str(source))


def parse_condition(text: str) -> Condition:
    """'lighting=dim, background=clutter' or a YAML/JSON mapping -> {'lighting': 'dim', ...}.

    An empty string is the empty condition (use the protocol's next one).
    """
    text = text.strip()
    if not text:
        return {}
    if "=" in text and not text.startswith("{"):
        pairs = [part.strip() for part in text.split(",") if part.strip()]
        parsed: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise InvalidArgumentError(f"condition entries must be factor=level, got {pair!r}")
            parsed[key.strip()] = value.strip()
        return parsed
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"condition is neither factor=level pairs nor a YAML mapping: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, int, float, bool)) for v in data.values()):
        raise InvalidArgumentError(f"condition must map factor names to level names, got {text!r}")
    return {str(k): str(v) for k, v in data.items()}


def announce(protocol: Protocol | None, upcoming: NextTrial | None, override: Condition | None) -> str:
    """The JSON text published on the next-condition topic and written to the log."""
    name = protocol.name if protocol else None
    if override:
        instruction = protocol.instruction_for(override) if protocol else ""
        return json.dumps({"protocol": name, "condition": override, "instruction": instruction, "source": "parameter"})
    if protocol is None:
        return json.dumps({"protocol": None, "condition": {}, "source": "none"})
    if upcoming is None:
        return json.dumps({"protocol": name, "done": True, "total": len(protocol.schedule())})
    return json.dumps({**upcoming.to_dict(protocol.name), "source": "protocol"})
