"""What the robot is committed to executing, from the controller's committed messages.

Contract of the committed actions (``contract.COMMITTED``, codec in ``nodes.ros_contract``;
published by the controller every control period): ``header.stamp`` is the controller's time
``now``, point k is the command due at ``stamp + time_from_start_k`` with
``time_from_start_k = (k + 1) * control_period``,
``joint_names`` are the action channel names and positions are in robot units.

Each message supersedes the plan of the previous ones from its stamp on; what is due before
its stamp has already been commanded. Kept together, the messages tell what was and will be
commanded at any time from shortly before the oldest one kept to the newest one's horizon,
which is what real-time chunking needs: the commands from the observation's stamp on,
resampled on the chunk's time grid (row 0 due at the observation stamp).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.errors import MalformedMessageError

KEEP_S = 2.0  # history kept behind the newest message: longer than any observation age we accept


class CommittedHistory:
    def __init__(self, channel_names: Sequence[str], keep_s: float = KEEP_S) -> None:
        self.names = tuple(channel_names)
        self.keep_ns = round(keep_s * NS_PER_S)
        self._times = np.empty(0, dtype=np.int64)
        self._rows = np.empty((0, len(self.names)))
        self._period_ns = 0
        self._newest_stamp_ns: int | None = None
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, names: Sequence[str], offsets_s: Sequence[float], positions: Sequence[Sequence[float]]) -> None:
        """Merge one committed message. MalformedMessageError says why a message cannot be used."""
        if tuple(names) != self.names:
            raise MalformedMessageError(f"committed joint_names {list(names)} are not the action channels {list(self.names)}")
        rows = np.asarray(positions, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != len(self.names):
            raise MalformedMessageError(f"committed positions must be (points, {len(self.names)}), got shape {rows.shape}")
        if not np.all(np.isfinite(rows)):
            raise MalformedMessageError("committed positions are not finite")
        offsets = np.round(np.asarray(offsets_s, dtype=np.float64) * NS_PER_S).astype(np.int64)
        if offsets.shape != (rows.shape[0],) or offsets[0] <= 0 or np.any(np.diff(offsets) <= 0):
            raise MalformedMessageError("committed time_from_start must be positive and increasing, one per point")
        with self._lock:
            if self._newest_stamp_ns is not None and stamp_ns < self._newest_stamp_ns:
                raise MalformedMessageError("committed message is older than one already merged; it was superseded")
            self._newest_stamp_ns = stamp_ns
            keep = (self._times <= stamp_ns) & (self._times >= stamp_ns - self.keep_ns)
            self._times = np.concatenate([self._times[keep], stamp_ns + offsets])
            self._rows = np.concatenate([self._rows[keep], rows])
            self._period_ns = int(offsets[0])

    def resample(self, start_ns: int, dt_s: float, max_rows: int) -> np.ndarray | None:
        """Commands due at ``start_ns + j * dt_s`` for j = 0.. up to the known horizon, at most
        ``max_rows``; None when nothing is known from ``start_ns`` on.

        The first command of the oldest message kept is held back by one control period (the
        command due at that message's own stamp); earlier than that nothing is known.
        """
        with self._lock:
            times, rows, period_ns = self._times, self._rows, self._period_ns
        if len(times) == 0 or max_rows <= 0:
            return None
        if start_ns < times[0] - period_ns or start_ns > times[-1]:
            return None
        dt_ns = dt_s * NS_PER_S
        count = min(max_rows, int((times[-1] - start_ns) // dt_ns) + 1)
        # Relative to the oldest point, so float64 keeps nanoseconds (absolute ROS times do not).
        # np.interp holds the end values outside the points; only the hold before the first
        # point is used, and it is limited to one period above.
        relative = (times - times[0]).astype(np.float64)
        at = (start_ns - int(times[0])) + np.arange(count) * dt_ns
        return np.stack([np.interp(at, relative, rows[:, j]) for j in range(rows.shape[1])], axis=1)
