"""When to step the simulation: locked to the clock (real time) or as fast as possible.

In real time, the number of control periods due is read off the elapsed clock time; a sim
that falls behind catches up a few periods at once, and beyond that drops the lag (counted)
rather than spiralling. Sim instants map to clock time as ``start + (steps + dropped) * period``,
so published stamps stay on the wall clock either way.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Pacer:
    period_ns: int
    realtime: bool = True
    max_catchup_steps: int = 5
    start_ns: int = 0
    steps: int = 0
    dropped_steps: int = 0

    def __post_init__(self) -> None:
        if self.period_ns <= 0:
            raise ValueError(f"period must be positive, got {self.period_ns} ns")
        if self.max_catchup_steps < 1:
            raise ValueError(f"max_catchup_steps must be at least 1, got {self.max_catchup_steps}")

    def start(self, now_ns: int) -> None:
        self.start_ns, self.steps, self.dropped_steps = now_ns, 0, 0

    def due(self, now_ns: int) -> int:
        """Control periods to simulate now; dropping the excess beyond the catch-up bound."""
        if not self.realtime:
            return 1
        behind = (now_ns - self.start_ns) // self.period_ns - self.steps - self.dropped_steps
        if behind > self.max_catchup_steps:
            self.dropped_steps += behind - self.max_catchup_steps
            behind = self.max_catchup_steps
        return max(0, behind)

    def advanced(self, steps: int = 1) -> None:
        self.steps += steps

    @property
    def offset_ns(self) -> int:
        """Clock time of the current sim instant, relative to the start."""
        return (self.steps + self.dropped_steps) * self.period_ns

    @property
    def sim_time_s(self) -> float:
        return self.steps * self.period_ns / 1e9

    def next_due_ns(self) -> int:
        return self.start_ns + self.offset_ns + self.period_ns

    def real_time_factor(self, now_ns: int) -> float:
        """Simulated time over elapsed clock time since start (1.0 when keeping up)."""
        elapsed = now_ns - self.start_ns
        return self.steps * self.period_ns / elapsed if elapsed > 0 else 0.0
