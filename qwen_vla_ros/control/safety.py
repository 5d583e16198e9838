"""The per-period safety stages after chunk judgement: clamp, ramp, rate limits, hold.

Every period, a target (or None, meaning hold) becomes a command in this order:

1. clamp the target to the position limits;
2. jump guard: after start, a takeover or an e-stop reset, the command starts at the
   measured position and the target is faded in with a minimum-jerk ramp;
3. velocity and acceleration limits (:class:`RateLimiter`), which also keep the command
   inside the position limits;
4. hold (watchdog, e-stop): arms brake at full deceleration to where they can stop and stay
   there; velocity channels (a base) go to zero at once, the one place a limit yields.

The ramp sits before the rate limiter so that every command, ramped or not, obeys the
limits; "limits first, then ramp" would let the ramp's own motion exceed them.

Each step is limited over the time since the previous one, capped at the nominal period:
an extra step served early (a takeover) or the period after a late one moves the command
only as far as its real duration allows. A second step at the same instant repeats the
command.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import modern_robotics as mr
import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.control.limits import LimitCounts, LimiterState, RateLimiter, stopping_point


@dataclass
class SafetyCounts:
    clamped: int = 0  # channel-periods whose target lay outside the position limits
    limits: LimitCounts = field(default_factory=LimitCounts)


class SafetyFilter:
    def __init__(self, layout: CommandLayout, period_s: float, ramp_s: float):
        self.layout = layout
        self.period_s = period_s
        self.ramp_ns = round(ramp_s * NS_PER_S)
        self.limiter = RateLimiter(layout.lower, layout.upper, layout.velocity, layout.acceleration, period_s)
        self.state: LimiterState | None = None
        self._previous_target: np.ndarray | None = None
        self._ramp_pending = False
        self._ramp_from: np.ndarray | None = None
        self._ramp_start_ns: int | None = None
        self._hold_target: np.ndarray | None = None
        self._last_step_ns: int | None = None

    @property
    def started(self) -> bool:
        return self.state is not None

    @property
    def position(self) -> np.ndarray:
        """The filtered command position; RuntimeError before :meth:`reset` has given the filter a start."""
        if self.state is None:
            raise RuntimeError("the safety filter has no position before reset()")
        return self.state.position

    @property
    def ramping(self) -> bool:
        return self._ramp_pending or self._ramp_start_ns is not None

    def reset(self, measured: np.ndarray) -> None:
        """Command from the measured position, at rest; the next target ramps in from there."""
        position = self.layout.clamp(np.asarray(measured, dtype=float))
        self.state = LimiterState(position, np.zeros_like(position))
        self._previous_target = None
        self._hold_target = None
        self.arm_ramp()

    def arm_ramp(self) -> None:
        """Fade the next target in from wherever the command is when it arrives (bumpless hand-over)."""
        self._ramp_pending = True
        self._ramp_start_ns = None

    def cancel_ramp(self) -> None:
        """The next target continues from the command by construction: no ramp, and no velocity feed-forward
        from the previous source's targets."""
        self._ramp_pending = False
        self._ramp_start_ns = None
        self._previous_target = None

    def copy(self) -> SafetyFilter:
        """An independent filter for look-ahead; arrays are never mutated in place, so a shallow copy suffices."""
        return copy.copy(self)

    def elapsed_s(self, now_ns: int) -> float:
        """Seconds this step covers: since the last step, at most one period (a full period for the first)."""
        if self._last_step_ns is None:
            return self.period_s
        return min(max(now_ns - self._last_step_ns, 0) / NS_PER_S, self.period_s)

    def step(self, target: np.ndarray | None, now_ns: int, counts: SafetyCounts | None = None) -> LimiterState:
        if self.state is None:
            raise RuntimeError("reset() the safety filter with a measured position before stepping it")
        dt = self.elapsed_s(now_ns)
        if dt <= 0.0:
            return self.state
        self._last_step_ns = now_ns
        if target is None:
            return self._hold(counts, dt)
        self._hold_target = None
        clamped = self.layout.clamp(target)
        if counts is not None:
            counts.clamped += int(np.count_nonzero(clamped != target))
        target = self._ramp(clamped, now_ns)
        target_velocity = np.zeros_like(target) if self._previous_target is None else (target - self._previous_target) / dt
        self._previous_target = target
        self.state = self.limiter.step(self.state, target, target_velocity, counts.limits if counts else None, dt)
        return self.state

    def _ramp(self, target: np.ndarray, now_ns: int) -> np.ndarray:
        assert self.state is not None
        if self._ramp_pending:
            self._ramp_pending = False
            self._ramp_start_ns = now_ns
            self._ramp_from = self.state.position
            self._previous_target = None
        if self._ramp_start_ns is None or self._ramp_from is None:
            return target
        elapsed = now_ns - self._ramp_start_ns
        if self.ramp_ns <= 0 or elapsed >= self.ramp_ns:
            self._ramp_start_ns = None
            return target
        weight = mr.QuinticTimeScaling(self.ramp_ns, max(elapsed, 0))
        return self._ramp_from + weight * (target - self._ramp_from)

    def _hold(self, counts: SafetyCounts | None, dt: float) -> LimiterState:
        assert self.state is not None
        stopping = self.layout.velocity_channel
        position = np.where(stopping, 0.0, self.state.position)
        velocity = np.where(stopping, 0.0, self.state.velocity)
        if self._hold_target is None:
            brake = stopping_point(position, velocity, self.layout.acceleration, self.period_s)
            self._hold_target = np.where(stopping, 0.0, self.layout.clamp(brake))
        self._previous_target = None
        limits = counts.limits if counts else None
        self.state = self.limiter.step(LimiterState(position, velocity), self._hold_target, np.zeros_like(position), limits, dt)
        return self.state
