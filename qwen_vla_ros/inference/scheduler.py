"""When the policy node starts the next inference.

In ``policy`` mode an inference starts when the actions left in the last published chunk
fall below ``remaining_threshold_s`` (trigger ``remaining``) or every ``1 / replan_hz``
(trigger ``rate``); the first chunk, and the first after a return to ``policy``, start at
once so the controller has a fresh chunk before it runs out. In ``teleop`` and ``hold``
nothing is published, but an unpublished inference every ``keep_warm_s`` keeps the model
warm.
"""
from __future__ import annotations

import threading
from typing import Literal

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.runtime import InferenceSchedule
from qwen_vla_ros.errors import MalformedMessageError

POLICY, TELEOP, HOLD = "policy", "teleop", "hold"
MODES = (POLICY, TELEOP, HOLD)
Decision = Literal["infer", "warm", "wait"]
IDLE_WAIT_S = 0.05  # longest sleep between decisions when nothing is due


class InferenceScheduler:
    def __init__(self, schedule: InferenceSchedule) -> None:
        self.schedule = schedule
        self._mode = POLICY
        self._chunk_end_ns: int | None = None
        self._last_start_ns: int | None = None
        self._last_any_ns: int | None = None
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> bool:
        """Switch mode; True when it changed. Entering ``policy`` asks for a chunk at once."""
        if mode not in MODES:
            raise MalformedMessageError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
        with self._lock:
            if mode == self._mode:
                return False
            self._mode = mode
            if mode == POLICY:
                self._chunk_end_ns = None
                self._last_start_ns = None
            return True

    def decide(self, now_ns: int) -> Decision:
        return "wait" if self.wait_s(now_ns) > 0 else ("infer" if self._mode == POLICY else "warm")

    def wait_s(self, now_ns: int) -> float:
        """Seconds until the next inference is due (0: due now), at most IDLE_WAIT_S."""
        with self._lock:
            due_ns = self._due_ns()
        if due_ns is None:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(0.0, (due_ns - now_ns) / NS_PER_S))

    def _due_ns(self) -> int | None:
        schedule = self.schedule
        if self._mode != POLICY:
            if schedule.keep_warm_s <= 0:
                return None
            return 0 if self._last_any_ns is None else self._last_any_ns + round(schedule.keep_warm_s * NS_PER_S)
        if schedule.trigger == "rate":
            return 0 if self._last_start_ns is None else self._last_start_ns + round(NS_PER_S / schedule.replan_hz)
        if self._chunk_end_ns is None:
            return 0
        return self._chunk_end_ns - round(schedule.remaining_threshold_s * NS_PER_S)

    def started(self, now_ns: int, decision: Decision) -> None:
        with self._lock:
            self._last_any_ns = now_ns
            if decision == "infer":
                self._last_start_ns = now_ns

    def published(self, last_action_due_ns: int) -> None:
        with self._lock:
            self._chunk_end_ns = last_action_due_ns
