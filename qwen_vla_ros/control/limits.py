"""Per-channel position, velocity and acceleration limiting of a command stream.

Limits hold per step over the time ``dt`` that really elapsed since the last command: the
command moves at most ``velocity * dt`` and its velocity changes by at most
``acceleration * dt``. Callers cap ``dt`` at the nominal period T, so a period that runs
late moves the robot less, never more, and one that runs early (a takeover served at once,
the period after a late one) moves it proportionally less. Braking distances assume that
later steps are at most T long, which the cap makes true.

The limiter follows a target and its feedforward velocity exactly when that is within
limits. Otherwise it closes the gap as fast as the limits allow while staying able to
stop: its speed towards the target (relative to the target's own velocity) and towards
each position bound never exceeds what the acceleration limit can still brake away.
Because braking at full deceleration is always available from any state it produces, the
position bounds are never crossed, even by a target that jumps or stops dead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def braking_speed(distance: np.ndarray, inverse_acceleration: np.ndarray, period_s: float) -> np.ndarray:
    """Largest speed v for which one more period of travel (v*T) plus a full stop (v^2/2a) fits in ``distance``.

    The root of v*T + v^2/(2a) = d, written as 2d / (T + sqrt(T^2 + 2d/a)) so that an
    unlimited acceleration (1/a = 0) needs no special case: it gives d/T.
    """
    distance = np.maximum(distance, 0.0)
    return 2.0 * distance / (period_s + np.sqrt(period_s**2 + 2.0 * distance * inverse_acceleration))


def stopping_point(position: np.ndarray, velocity: np.ndarray, acceleration: np.ndarray, period_s: float) -> np.ndarray:
    """Where the command comes to rest if it brakes at full deceleration from now."""
    finite = np.isfinite(acceleration)
    a = np.where(finite, acceleration, 1.0)
    speed = np.abs(velocity)
    steps = np.where(finite, np.floor(speed / (a * period_s)), 0.0)
    # Periods at speeds |v| - aT, |v| - 2aT, ... until the next would be negative.
    travel = period_s * (steps * speed - a * period_s * steps * (steps + 1) / 2)
    return position + np.sign(velocity) * travel


@dataclass
class LimiterState:
    position: np.ndarray
    velocity: np.ndarray  # velocity of the last step (position difference / its dt)


@dataclass
class LimitCounts:
    """How many channel-periods each limit changed the command (reported in diagnostics)."""

    velocity: int = 0
    acceleration: int = 0


class RateLimiter:
    def __init__(self, lower: np.ndarray, upper: np.ndarray, velocity: np.ndarray, acceleration: np.ndarray, period_s: float):
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.max_velocity, self.max_acceleration = np.asarray(velocity, float), np.asarray(acceleration, float)
        self.period_s = float(period_s)
        self._inverse = np.tile(1.0 / self.max_acceleration, 3)  # for the three braking distances at once

    def step(
        self,
        state: LimiterState,
        target: np.ndarray,
        target_velocity: np.ndarray,
        counts: LimitCounts | None = None,
        dt_s: float | None = None,
    ) -> LimiterState:
        """Advance ``dt_s`` (default: one nominal period; at most that) towards ``target``, already inside the bounds."""
        dt = self.period_s if dt_s is None else dt_s
        if not 0.0 < dt <= self.period_s * (1 + 1e-9):
            raise ValueError(f"a limiter step must last (0, {self.period_s}] s, got {dt}")
        n = len(target)
        max_step = self.max_acceleration * dt  # largest velocity change in this step
        x, v = state.position, state.velocity
        wanted = (target - x) / dt
        lag = target - x - target_velocity * dt
        brakes = braking_speed(np.concatenate([np.abs(lag), self.upper - x, x - self.lower]), self._inverse, dt)
        catch_up = target_velocity + np.sign(lag) * brakes[:n]
        # Land on the target only if the next step can match its velocity; else approach braking.
        exact = (np.abs(wanted - v) <= max_step) & (np.abs(wanted - target_velocity) <= max_step)
        desired = np.where(exact, wanted, catch_up)
        ceiling = np.minimum(self.max_velocity, brakes[n : 2 * n])
        floor = -np.minimum(self.max_velocity, brakes[2 * n :])
        bounded = np.minimum(np.maximum(desired, floor), ceiling)
        velocity = np.minimum(np.maximum(bounded, v - max_step), v + max_step)
        if counts is not None:
            counts.velocity += int(np.count_nonzero(bounded != desired))
            counts.acceleration += int(np.count_nonzero(velocity != bounded))
        position = np.minimum(np.maximum(x + velocity * dt, self.lower), self.upper)
        return LimiterState(position, (position - x) / dt)
