"""One recorder's trials: start, record, label, recover; the trial_recorder node's whole brain.

Every decision the node makes lives here so it is tested without ROS: which condition
comes next, what a trial's metadata says, when a takeover counts as an intervention,
what happens to a trial whose recorder died. The node only feeds messages and times in.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.contract import SIM_SUCCESS
from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError
from qwen_vla_ros.recording.bag import BagError, BagSummary, BagWriter, repair_bag
from qwen_vla_ros.recording.protocol import Condition, NextTrial, Protocol, announce, next_trial
from qwen_vla_ros.recording.trial import VERDICTS, Intervention, Outcome, TopicCounts, TrialRecord, TrialStore, iso_time
from qwen_vla_ros.recording.writer import BagRecorder, MessageQueue, QueuedMessage, WriterStats

TELEOP_MODE = "teleop"


class TrialError(QwenVlaError, RuntimeError):
    """A request that cannot be honoured in the current state (start while recording, ...)."""


@dataclass(frozen=True)
class RecorderIdentity:
    """What ran during the trials: the same for every trial of one recorder process."""

    embodiment: str
    robot: str
    config: str
    backend: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    instruction: str = ""
    config_overrides: tuple[str, ...] = ()
    logs: str | None = None  # the run's node-log folder, when the bring-up keeps one


@dataclass(frozen=True)
class SessionSettings:
    queue_bytes: int = 512 * 1024 * 1024
    flush_period_s: float = 1.0
    auto_label_success: bool = False
    trial_timeout_s: float = 0.0  # 0: no timeout

    def __post_init__(self) -> None:
        if self.queue_bytes <= 0:
            raise InvalidArgumentError(f"queue size must be positive, got {self.queue_bytes} bytes")
        if self.flush_period_s <= 0:
            raise InvalidArgumentError(f"flush period must be positive, got {self.flush_period_s} s")
        if self.trial_timeout_s < 0:
            raise InvalidArgumentError(f"trial timeout must be 0 (none) or positive, got {self.trial_timeout_s} s")


class TrialSession:
    def __init__(
        self,
        store: TrialStore,
        identity: RecorderIdentity,
        protocol: Protocol | None,
        open_writer: Callable[[Path], BagWriter],
        settings: SessionSettings = SessionSettings(),
        expected_topics: Mapping[str, str] | None = None,
    ) -> None:
        """``expected_topics`` (topic -> type, '' if unknown) are listed in every trial.yaml,
        with 0 messages when nothing came: a camera that never published is on record."""
        self.store = store
        self.expected_topics = dict(expected_topics or {})
        self.identity = identity
        self.protocol = store.bind_protocol(protocol)
        self.settings = settings
        self._open_writer = open_writer
        self._control = threading.Lock()  # serialises start/stop so each sees the last one finished
        self._lock = threading.Lock()  # guards the active record against callbacks and the writer thread
        self._record: TrialRecord | None = None
        self._queue: MessageQueue | None = None
        self._recorder: BagRecorder | None = None
        self._mode: str | None = None
        self._instruction: str | None = None
        self._latched: dict[str, QueuedMessage] = {}

    @property
    def active(self) -> TrialRecord | None:
        with self._lock:
            return self._record.model_copy(deep=True) if self._record else None

    def recover(self) -> list[TrialRecord]:
        """Mark every trial whose recorder died ``incomplete`` and make its bag readable."""
        return recover_interrupted(self.store, self.protocol)

    def upcoming(self) -> NextTrial | None:
        if self.protocol is None:
            return None
        completed = [r.condition for r in self.store.records() if r.outcome in VERDICTS]
        return next_trial(self.protocol, completed)

    def announcement(self, override: Condition | None = None) -> str:
        return announce(self.protocol, None if override else self.upcoming(), override)

    def check_condition(self, condition: Mapping[str, str]) -> Condition:
        """Validated against the protocol's factors; without a protocol any labels are allowed."""
        return self.protocol.check_condition(condition) if self.protocol else dict(condition)

    def start(self, now_ns: int, operator: str = "", condition: Mapping[str, str] | None = None) -> TrialRecord:
        """Open a new trial. ``condition`` overrides the protocol's next one (operator's choice)."""
        with self._control:
            if self._record is not None:
                raise TrialError(f"trial {self._record.id} is still recording; stop or abort it first")
            if condition:
                chosen = self.check_condition(condition)
            else:
                upcoming = self.upcoming()
                if self.protocol is not None and upcoming is None:
                    raise TrialError(f"protocol {self.protocol.name!r} is complete; set a condition to run more trials")
                chosen = upcoming.condition if upcoming else {}
            with self._lock:
                instruction = self._current_instruction(chosen)
            record = self.store.create(
                {
                    "protocol": self.protocol.name if self.protocol else None,
                    "embodiment": self.identity.embodiment,
                    "robot": self.identity.robot,
                    "config": self.identity.config,
                    "config_overrides": list(self.identity.config_overrides),
                    "checkpoint": self.identity.checkpoint,
                    "checkpoint_sha256": self.identity.checkpoint_sha256,
                    "backend": self.identity.backend,
                    "instruction": instruction,
                    "condition": chosen,
                    "operator": operator,
                    "start_time": iso_time(now_ns),
                    "start_ns": now_ns,
                    "logs": self.identity.logs,
                }
            )
            try:
                writer = self._open_writer(self.store.bag_dir(record))
            except Exception as exc:  # noqa: BLE001 - rosbag2_py and rosbags fail in types of their own; the trial
                # is kept on record as incomplete with the error's type, and the caller gets a TrialError
                record.finish("incomplete", now_ns)
                record.notes.append(f"could not open the bag: {type(exc).__name__}: {exc}")
                self.store.save(record)
                self.store.write_index(self.protocol)
                raise TrialError(f"trial {record.id} could not open its bag: {exc}") from exc
            record.writer = writer.name
            queue = MessageQueue(self.settings.queue_bytes)
            with self._lock:
                # Latched state (mode, e-stop) as of the start, stamped with the start: its original
                # stamp may be long before the trial and would stretch the bag's time span.
                for message in self._latched.values():
                    queue.put(replace(message, timestamp_ns=max(message.timestamp_ns, now_ns)))
                self._record, self._queue = record, queue
                self._recorder = BagRecorder(writer, queue, self.settings.flush_period_s, self._on_flush)
                self.store.save(record)
            self.store.write_index(self.protocol)
            return record.model_copy(deep=True)

    def _current_instruction(self, condition: Condition) -> str:
        if self._instruction:
            return self._instruction
        if self.protocol is not None:
            return self.protocol.instruction_for(condition) or self.identity.instruction
        return self.identity.instruction

    def offer(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes, latched: bool = False) -> None:
        """Called from subscription callbacks: enqueue only, never block on the disk."""
        message = QueuedMessage(topic, msgtype, timestamp_ns, data)
        with self._lock:
            if latched:
                self._latched[topic] = message
            queue = self._queue
        if queue is not None:
            queue.put(message)

    def on_mode(self, mode: str, now_ns: int) -> None:
        """A change into ``teleop`` while a trial records is one intervention."""
        with self._lock:
            previous, self._mode = self._mode, mode
            if self._record is None or mode != TELEOP_MODE or previous == TELEOP_MODE:
                return
            self._record.interventions.append(
                Intervention(at_s=(now_ns - self._record.start_ns) / NS_PER_S, from_mode=previous or "unknown")
            )

    def on_instruction(self, text: str, now_ns: int) -> None:
        with self._lock:
            changed = text != self._instruction
            self._instruction = text
            if self._record is not None and changed:
                at_s = (now_ns - self._record.start_ns) / NS_PER_S
                self._record.notes.append(f"instruction changed at {at_s:.2f} s to {text!r}")

    def on_sim_success(self, success: bool, now_ns: int) -> TrialRecord | None:
        """With auto-labelling on, the simulator's success ends the trial as a success."""
        if not (success and self.settings.auto_label_success):
            return None
        return self._stop_if_recording("success", now_ns, f"labelled success by {SIM_SUCCESS.name}")

    def check_timeout(self, now_ns: int) -> TrialRecord | None:
        """A trial longer than ``trial_timeout_s`` ends as a failure (the sim's episode limit)."""
        limit = self.settings.trial_timeout_s
        with self._lock:
            running = self._record is not None and limit > 0 and now_ns - self._record.start_ns >= limit * NS_PER_S
        return self._stop_if_recording("failure", now_ns, f"timed out after {limit:g} s") if running else None

    def close(self, now_ns: int) -> TrialRecord | None:
        """Shut-down in the middle of a trial: close the bag cleanly and say so."""
        return self._stop_if_recording("incomplete", now_ns, "recorder shut down during the trial")

    def _stop_if_recording(self, outcome: Outcome, now_ns: int, note: str) -> TrialRecord | None:
        try:
            return self.stop(outcome, now_ns, note)
        except TrialError:
            return None

    def stop(self, outcome: Outcome, now_ns: int, note: str = "") -> TrialRecord:
        """End the trial: drain the queue into the bag, close it, write the verdict."""
        with self._control:
            with self._lock:
                if self._record is None or self._recorder is None:
                    raise TrialError("no trial is recording")
                record, recorder = self._record, self._recorder
                self._record = self._recorder = self._queue = None
            stats = recorder.stop()  # joins the writer thread, which takes self._lock to flush
            self._apply(record, stats)
            record.finish(outcome, now_ns)
            if note:
                record.notes.append(note)
            self.store.save(record)
            self.store.write_index(self.protocol)
            return record

    def _on_flush(self, stats: WriterStats) -> None:
        """Writer thread, every flush: the counts so far reach disk with the bag."""
        with self._lock:
            if self._record is None:
                return
            self._apply(self._record, stats)
            self.store.save(self._record)

    def _apply(self, record: TrialRecord, stats: WriterStats) -> None:
        topics = set(stats.types) | set(stats.queue_dropped) | set(self.expected_topics)
        record.topics = {
            topic: TopicCounts(
                type=stats.types.get(topic) or (record.topics[topic].type if topic in record.topics else "")
                or self.expected_topics.get(topic, ""),
                messages=stats.written[topic],
                dropped=stats.dropped(topic),
            )
            for topic in sorted(topics)
        }
        throughput = stats.mb_per_busy_s
        record.writer_mb_per_s = round(throughput, 1) if throughput is not None else None
        record.queue_peak_mb = round(stats.queue_peak_bytes / 1e6, 2)
        for problem in stats.problems():
            if problem not in record.notes:
                record.notes.append(problem)


def recover_interrupted(store: TrialStore, protocol: Protocol | None) -> list[TrialRecord]:
    """Every trial without an outcome lost its recorder: repair its bag, count what the bag
    holds, end it at its last message and mark it ``incomplete``; then rebuild the index."""
    recovered = []
    for record in store.records():
        if record.outcome is not None:
            continue
        try:
            repair = repair_bag(store.bag_dir(record))
            summary, note = repair.summary, repair.note
        except (BagError, OSError) as exc:  # keep the trial on record even if its bag is beyond repair
            summary, note = BagSummary(), f"its bag could not be repaired: {exc}"
        known = record.topics
        record.topics = {
            topic: TopicCounts(
                type=summary.topics.get(topic, (known[topic].type if topic in known else "", 0))[0],
                messages=summary.topics.get(topic, ("", 0))[1],
                dropped=known[topic].dropped if topic in known else 0,
            )
            for topic in sorted(set(known) | set(summary.topics))
        }
        record.finish("incomplete", max(summary.end_ns or record.start_ns, record.start_ns))
        record.notes.append(f"recorder stopped before the trial ended; {note}")
        store.save(record)
        recovered.append(record)
    store.write_index(protocol)
    return recovered
