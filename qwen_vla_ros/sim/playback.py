"""Playing a planned trajectory (the scripted expert's) as action chunks, as a policy would send them.

Chunks are cut on the trajectory's own time grid: a chunk stamped ``start + i * dt`` carries
actions ``i .. i + H - 1``, so consecutive chunks agree wherever they overlap and the
controller's blending changes nothing. Past the end, chunks repeat the last action, so the
controller always has a plan that holds the final pose.
"""
from __future__ import annotations

import math

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.sim.scripted import Trajectory


class TrajectoryPlayer:
    def __init__(self, trajectory: Trajectory, start_ns: int, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"chunk horizon must be >= 1, got {horizon}")
        self.trajectory = trajectory
        self.start_ns = start_ns
        self.horizon = horizon
        self.dt_ns = round(trajectory.period_s * NS_PER_S)
        self._sent: int | None = None

    @property
    def end_ns(self) -> int:
        return self.start_ns + len(self.trajectory.actions) * self.dt_ns

    def done(self, now_ns: int) -> bool:
        return now_ns >= self.end_ns

    def chunk(self, now_ns: int) -> ActionChunk | None:
        """The chunk due now, stamped at the latest grid time not after ``now_ns``; None when
        that grid time was already sent (the controller would refuse it as a duplicate)."""
        actions = self.trajectory.actions
        index = max(0, math.floor((now_ns - self.start_ns) / self.dt_ns))
        if index == self._sent:
            return None
        self._sent = index
        rows = np.arange(index, index + self.horizon)
        window = actions[np.minimum(rows, len(actions) - 1)]
        return ActionChunk(window, self.trajectory.channel_names, self.trajectory.period_s,
                           self.start_ns + index * self.dt_ns)
