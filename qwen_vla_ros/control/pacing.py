"""Absolute-deadline pacing for the control loop.

rclpy's timers are dispatched by a Python executor that rebuilds its wait set on every
wake-up and competes for the GIL with every other callback, which made a 50 Hz controller
jitter by milliseconds (docs/benchmarks.md, controller loop). The controller node therefore
runs its loop on a thread of its own that sleeps to absolute deadlines. The policy for late
periods lives here, free of threads and clocks, so it can be tested exactly: a period that
is late is run at once, and periods missed entirely are dropped rather than run back to
back, because bunched commands would move the arm in a burst. A period served early on
purpose (a takeover) restarts the grid from that moment, so the next one is a full period on.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Deadlines:
    """Deadlines ``start + k * period``; ``skipped`` counts the periods dropped as missed."""

    period_ns: int
    next_ns: int
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.period_ns <= 0:
            raise ValueError(f"period must be positive, got {self.period_ns} ns")

    def wait_ns(self, now_ns: int) -> int:
        """How long to sleep before the next period; 0 when it is due. Advances past it.

        When ``now`` is a whole period or more behind, the deadlines that passed are dropped
        (counted in ``skipped``) and the grid stays aligned to the start, so later periods
        keep their phase.
        """
        due = self.next_ns
        if now_ns >= due + self.period_ns:
            missed = (now_ns - due) // self.period_ns
            self.skipped += missed
            due += missed * self.period_ns
        self.next_ns = due + self.period_ns
        return max(0, due - now_ns)

    def restart(self, now_ns: int) -> None:
        """A period ran at ``now`` off the grid: the next is due one period later."""
        self.next_ns = now_ns + self.period_ns
