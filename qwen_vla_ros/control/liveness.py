"""Policy liveness: is the policy process still there, judged from its heartbeat's arrival times.

The policy node beats from a thread of its own (not its inference thread), so a long
inference is not mistaken for death, while a killed, hung or disconnected policy stops the
beats. Arrival is measured on the controller's clock, so a clock offset between the hosts
does not matter. A policy never heard from counts as lost: chunks from a publisher that
sends no heartbeat cannot drive the robot (docs/safety.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qwen_vla_ros.chunk import NS_PER_S

LivenessChange = Literal["found", "lost", "back"]  # first heartbeat, silence, heartbeat after a loss


@dataclass(frozen=True)
class LivenessEvent:
    change: LivenessChange
    message: str


class PolicyLiveness:
    def __init__(self, timeout_s: float):
        self.timeout_ns = round(timeout_s * NS_PER_S)
        self.last_beat_ns: int | None = None
        self.losses = 0  # times an alive policy went silent
        self._was_alive = False

    def beat(self, now_ns: int) -> None:
        """A heartbeat arrived at ``now_ns`` (the controller's clock); an older arrival time is ignored."""
        if self.last_beat_ns is None or now_ns > self.last_beat_ns:
            self.last_beat_ns = now_ns

    def alive(self, now_ns: int) -> bool:
        return self.last_beat_ns is not None and now_ns - self.last_beat_ns <= self.timeout_ns

    def silence_s(self, now_ns: int) -> float:
        """Seconds since the last heartbeat; infinite before the first."""
        return float("inf") if self.last_beat_ns is None else max(now_ns - self.last_beat_ns, 0) / NS_PER_S

    def update(self, now_ns: int) -> LivenessEvent | None:
        """Call once per period: the change since the last call, if any, with the reason to log."""
        alive = self.alive(now_ns)
        if alive == self._was_alive:
            return None
        self._was_alive = alive
        if alive and not self.losses:
            return LivenessEvent("found", "policy heartbeat received: the policy's chunks may drive the robot")
        if alive:
            return LivenessEvent("back", "policy heartbeat is back: the next chunk ramps in from the command")
        self.losses += 1
        return LivenessEvent(
            "lost",
            f"policy lost: no heartbeat for {self.silence_s(now_ns):.3f} s (safety.policy_timeout_s "
            f"{self.timeout_ns / NS_PER_S:g} s); the plan is dropped and the arms brake to a hold",
        )
