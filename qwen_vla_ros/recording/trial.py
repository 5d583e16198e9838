"""Trial bookkeeping on disk: one directory per trial with its bag and ``trial.yaml``, plus a
protocol-level ``index.yaml`` listing every trial.

``trial.yaml`` is written when a trial starts (with no outcome yet), rewritten at every
writer flush with the counts so far, and finalised at the end. A file without an outcome
is therefore a trial whose recorder died; recovery marks it ``incomplete``. Files are
replaced atomically so a crash never leaves half a file. The index is derived from the
trial files and rebuilt whenever one changes, so the two never disagree for long.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.loader import ConfigError, read_yaml, validate
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.recording.protocol import Protocol

Outcome = Literal["success", "failure", "aborted", "incomplete"]
VERDICTS: tuple[Outcome, ...] = ("success", "failure")
"""Outcomes that count towards success rates and fill a protocol slot."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Intervention(Record):
    """A takeover: ``/qwen_vla/mode`` changed into ``teleop`` during the trial."""

    at_s: float = Field(description="seconds after the trial started")
    from_mode: str


class TopicCounts(Record):
    type: str
    messages: int = Field(default=0, ge=0, description="written to the bag")
    dropped: int = Field(default=0, ge=0, description="lost because the write queue was full or the writer failed")


class TrialRecord(Record):
    id: str
    index: int = Field(ge=1)
    protocol: str | None = None
    embodiment: str
    robot: str
    config: str = Field(description="embodiment config name or file the recorder ran with")
    config_overrides: list[str] = Field(default_factory=list, description="its KEY=VALUE overrides")
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    backend: str
    instruction: str = ""
    condition: dict[str, str] = Field(default_factory=dict)
    operator: str = ""
    start_time: str
    start_ns: int
    end_time: str | None = None
    end_ns: int | None = None
    duration_s: float | None = None
    outcome: Outcome | None = None
    interventions: list[Intervention] = Field(default_factory=list)
    topics: dict[str, TopicCounts] = Field(default_factory=dict)
    bag: str = "bag"
    writer: str = Field(default="", description="rosbag2_py or rosbags")
    writer_mb_per_s: float | None = Field(default=None, description="bytes written over time the writer was busy")
    queue_peak_mb: float | None = Field(default=None, description="most the write queue held")
    notes: list[str] = Field(default_factory=list)
    logs: str | None = Field(default=None, description="folder of the node logs of the run that recorded it")
    start_pose: dict[str, Any] | None = Field(
        default=None, description="the controller's move to the start pose just before the trial: pose, arrived, "
        "error_rad (largest measured joint error per arm); None without one")

    def finish(self, outcome: Outcome, end_ns: int) -> None:
        self.outcome = outcome
        self.end_ns = end_ns
        self.end_time = iso_time(end_ns)
        self.duration_s = max(0.0, (end_ns - self.start_ns) / NS_PER_S)


class IndexEntry(Record):
    id: str
    path: str
    condition: dict[str, str] = Field(default_factory=dict)
    outcome: Outcome | None = None
    operator: str = ""
    instruction: str = ""
    start_time: str = ""
    duration_s: float | None = None
    interventions: int = Field(default=0, ge=0)
    messages: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0)


class TrialIndex(Record):
    protocol: str | None = None
    factors: dict[str, list[str]] = Field(default_factory=dict, description="factor -> levels, in protocol order")
    trials: list[IndexEntry] = Field(default_factory=list)


def iso_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, tz=timezone.utc).isoformat(timespec="milliseconds")


def write_yaml_atomically(path: Path, data: Any) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    with scratch.open("w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


class DamagedTrialError(QwenVlaError, ValueError):
    """A trial file names a path that does not stay inside its own trial directory."""


@dataclass(frozen=True)
class DamagedTrial:
    """A trial directory that recovery, export and the index leave alone, and why."""

    path: Path
    reason: str


def contained_path(directory: Path, relative: str, what: str) -> Path:
    """``directory / relative``, refused unless it resolves strictly inside ``directory``.

    Paths come from files a person can edit; symlinks and '..' are resolved first, so a
    ``bag: /some/other/dir`` (or a link to it) can never become something repair renames
    or removes.
    """
    base = directory.resolve()
    target = (directory / relative).resolve()
    if target == base or not target.is_relative_to(base):
        raise DamagedTrialError(f"{what} {relative!r} resolves to {target}, outside its trial directory {base}")
    return directory / relative


def load_index(root: str | Path) -> TrialIndex:
    path = Path(root).expanduser() / TrialStore.INDEX
    if not path.is_file():
        raise ConfigError(str(path), ["no trial index here; point at a trial_recorder output_dir"])
    return validate(TrialIndex, read_yaml(path), str(path))


class TrialStore:
    """The output directory of one protocol (or of ad-hoc trials without one)."""

    INDEX = "index.yaml"
    PROTOCOL = "protocol.yaml"
    TRIALS = "trials"
    RECORD = "trial.yaml"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        (self.root / self.TRIALS).mkdir(parents=True, exist_ok=True)

    def trial_dir(self, trial_id: str) -> Path:
        return contained_path(self.root / self.TRIALS, trial_id, "trial id")

    def bag_dir(self, record: TrialRecord) -> Path:
        """The bag of ``record``; DamagedTrialError when its ``bag`` leaves the trial directory."""
        return contained_path(self.trial_dir(record.id), record.bag, "bag")

    def bind_protocol(self, protocol: Protocol | None) -> Protocol | None:
        """The protocol this directory records: the given one, or the one stored here.

        A directory holds one protocol, so results never mix; a different protocol for an
        existing directory is a ConfigError naming both.
        """
        path = self.root / self.PROTOCOL
        stored = validate(Protocol, read_yaml(path), str(path)) if path.is_file() else None
        if protocol is None:
            return stored
        if stored is not None and stored != protocol:
            raise ConfigError(str(path), [
                f"output directory already records protocol {stored.name!r}, which differs from the given "
                f"protocol {protocol.name!r}; choose another output_dir"
            ])
        if stored is None:
            write_yaml_atomically(path, protocol.model_dump(mode="json", exclude_defaults=True))
        return protocol

    def scan(self) -> tuple[list[TrialRecord], list[DamagedTrial]]:
        """Every trial, split into sound records and damaged directories.

        A trial is damaged when its ``id`` is not its directory's name or a path in it
        resolves outside its directory; nothing touches a damaged trial, so a hand-edited
        file can never make recovery rename or delete what is not the trial's own.
        """
        found, damaged = [], []
        for path in sorted((self.root / self.TRIALS).glob(f"*/{self.RECORD}")):
            record = validate(TrialRecord, read_yaml(path), str(path))
            try:
                if record.id != path.parent.name:
                    raise DamagedTrialError(f"id {record.id!r} is not the name of its directory {path.parent.name!r}")
                self.bag_dir(record)
            except DamagedTrialError as exc:
                damaged.append(DamagedTrial(path.parent, str(exc)))
                continue
            found.append(record)
        return sorted(found, key=lambda r: r.index), damaged

    def records(self) -> list[TrialRecord]:
        return self.scan()[0]

    def damaged(self) -> list[DamagedTrial]:
        return self.scan()[1]

    def create(self, fields: Mapping[str, Any]) -> TrialRecord:
        """A new trial directory and its first ``trial.yaml``, numbered after the existing ones
        (damaged ones included, so a new trial never lands in a damaged trial's directory)."""
        existing = [r.index for r in self.records()]
        existing += [int(m.group(1)) for p in (self.root / self.TRIALS).iterdir()
                     if (m := re.fullmatch(r"trial_(\d+)", p.name))]
        index = max(existing, default=0) + 1
        trial_id = f"trial_{index:04d}"
        self.trial_dir(trial_id).mkdir(parents=True)
        record = TrialRecord(id=trial_id, index=index, **fields)
        self.save(record)
        return record

    def save(self, record: TrialRecord) -> None:
        write_yaml_atomically(self.trial_dir(record.id) / self.RECORD, record.model_dump(mode="json"))

    def write_index(self, protocol: Protocol | None) -> TrialIndex:
        entries = [
            IndexEntry(
                id=r.id,
                path=str((self.trial_dir(r.id)).relative_to(self.root)),
                condition=r.condition,
                outcome=r.outcome,
                operator=r.operator,
                instruction=r.instruction,
                start_time=r.start_time,
                duration_s=r.duration_s,
                interventions=len(r.interventions),
                messages=sum(t.messages for t in r.topics.values()),
                dropped=sum(t.dropped for t in r.topics.values()),
            )
            for r in self.records()
        ]
        index = TrialIndex(
            protocol=protocol.name if protocol else None,
            factors={f.name: f.level_names for f in protocol.factors} if protocol else {},
            trials=entries,
        )
        write_yaml_atomically(self.root / self.INDEX, index.model_dump(mode="json"))
        return index
