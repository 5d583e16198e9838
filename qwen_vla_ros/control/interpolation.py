"""Continuous trajectories through a chunk's knots, sampled at the control rate.

Every method is a piecewise polynomial through the knots (scipy's ``BPoly.from_derivatives``)
differing only in how many derivatives are matched at each knot:

- ``linear``: position only;
- ``cubic_hermite``: position and velocity (C1);
- ``minimum_jerk``: position, velocity and acceleration (C2). A quintic is the curve of
  least integrated squared jerk for given end positions, velocities and accelerations, so
  each segment is the minimum-jerk segment for its knot conditions.

Knot velocities and accelerations are finite differences of the knots (central inside, one
sided at the first knot). At the last knot they are zero: the trajectory ends at rest,
which is what the controller holds when it runs out.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import BPoly

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.embodiment import Interpolation

DERIVATIVES: dict[str, int] = {"linear": 1, "cubic_hermite": 2, "minimum_jerk": 3}


def cosine_weight(fraction: float) -> float:
    """0 -> 0 and 1 -> 1 with zero slope at both ends; clipped outside [0, 1]."""
    fraction = min(max(fraction, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * fraction)


def knot_derivatives(knots: np.ndarray, dt: float, count: int) -> np.ndarray:
    """N x count x D: positions, then velocities and accelerations as the method needs."""
    layers = [knots]
    if count > 1:
        velocity = np.gradient(knots, dt, axis=0, edge_order=1)
        velocity[-1] = 0.0
        layers.append(velocity)
    if count > 2:
        acceleration = np.gradient(layers[1], dt, axis=0, edge_order=1)
        acceleration[-1] = 0.0
        layers.append(acceleration)
    return np.stack(layers, axis=1)


class Trajectory:
    """Knot k at ``start_ns + k * dt``; before the first knot it is the first, after the last the last."""

    def __init__(self, start_ns: int, dt: float, knots: np.ndarray, method: Interpolation):
        knots = np.asarray(knots, dtype=float)
        if knots.ndim != 2 or knots.shape[0] == 0:
            raise ValueError(f"knots must be N x D with N >= 1, got shape {knots.shape}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.start_ns = int(start_ns)
        self.dt = float(dt)
        self.knots = knots
        self.duration_s = (knots.shape[0] - 1) * self.dt
        self.end_ns = self.start_ns + round(self.duration_s * NS_PER_S)
        self._poly: BPoly | None = None
        if knots.shape[0] > 1:
            times = np.arange(knots.shape[0]) * self.dt
            self._poly = BPoly.from_derivatives(times, knot_derivatives(knots, self.dt, DERIVATIVES[method]))

    @classmethod
    def constant(cls, values: np.ndarray, start_ns: int) -> Trajectory:
        return cls(start_ns, 1.0, np.asarray(values, dtype=float)[None, :], "linear")

    @property
    def width(self) -> int:
        return int(self.knots.shape[1])

    def sample(self, t_ns: int) -> np.ndarray:
        if self._poly is None:
            return self.knots[0].copy()
        elapsed = min(max((t_ns - self.start_ns) / NS_PER_S, 0.0), self.duration_s)
        return np.asarray(self._poly(elapsed), dtype=float)
