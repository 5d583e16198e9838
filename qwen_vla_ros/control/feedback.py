"""What the controller knows about the robot: latest joint states and odometry, with a short history.

Freshness is judged on receive time (the controller's clock), so a driver on another
machine with a skewed clock cannot make stale data look fresh. The history is keyed on the
messages' own stamps, the clock the observation stamps of chunks also use, so a chunk can
be anchored to the state the policy saw.
"""
from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.embodiment import Safety
from qwen_vla_ros.control.layout import ArmLayout, CommandLayout
from qwen_vla_ros.embodiments.base import wrap_angle
from qwen_vla_ros.embodiments.gripper import measured_normalized
from qwen_vla_ros.errors import MalformedMessageError

HISTORY_LENGTH = 256  # ~2.5 s of 100 Hz joint states: longer than any sane inference latency


@dataclass(frozen=True)
class ArmSample:
    stamp_ns: int
    joints: np.ndarray
    gripper: float | None  # normalised opening


@dataclass(frozen=True)
class OdometrySample:
    stamp_ns: int
    pose: np.ndarray  # x, y, continuous yaw
    twist: np.ndarray  # v, omega


class _History:
    def __init__(self) -> None:
        self.samples: deque = deque(maxlen=HISTORY_LENGTH)
        self.received_ns: int | None = None

    def add(self, sample, now_ns: int) -> None:
        if self.samples and sample.stamp_ns < self.samples[-1].stamp_ns:
            self.samples.clear()  # the clock went backwards (sim reset, bag loop): start over
        self.samples.append(sample)
        self.received_ns = now_ns

    def latest(self):
        return self.samples[-1] if self.samples else None

    def at(self, stamp_ns: int):
        """The last sample stamped at or before ``stamp_ns`` (the earliest one if none is)."""
        if not self.samples:
            return None
        stamps = [s.stamp_ns for s in self.samples]
        index = bisect.bisect_right(stamps, stamp_ns) - 1
        return self.samples[max(index, 0)]


@dataclass(frozen=True)
class ChunkContext:
    """The robot state at a chunk's observation stamp: the anchor for deltas and robot-frame waypoints."""

    measured: np.ndarray  # command-space values
    arm_joints: dict[str, np.ndarray]
    pose: np.ndarray | None


class Feedback:
    def __init__(self, layout: CommandLayout, safety: Safety):
        self.layout = layout
        self.timeout_ns = round(safety.joint_state_timeout_s * NS_PER_S)
        self.arms = {arm.name: _History() for arm in layout.arms}
        self.odometry = _History()
        self.odometry_required = layout.base is not None and layout.base.waypoints
        self._raw_yaw: float | None = None
        self._yaw = 0.0

    def update_joint_state(self, arm: str, names: Sequence[str], positions: Sequence[float], stamp_ns: int, now_ns: int) -> None:
        """MalformedMessageError names missing joints or non-finite values; KeyError an arm the
        controller has no subscription for (a programming error)."""
        layout = self._arm(arm)
        values: Mapping[str, float] = dict(zip(names, positions, strict=False))
        missing = [name for name in layout.arm.joint_names if name not in values]
        if missing:
            raise MalformedMessageError(f"joint state for arm {arm!r} lacks joints {missing}")
        joints = np.array([values[name] for name in layout.arm.joint_names], dtype=float)
        gripper = measured_normalized(values, layout.gripper) if layout.gripper is not None else None
        if not np.all(np.isfinite(joints)) or (gripper is not None and not np.isfinite(gripper)):
            raise MalformedMessageError(f"joint state for arm {arm!r} has non-finite positions")
        self.arms[arm].add(ArmSample(stamp_ns, joints, gripper), now_ns)

    def update_odometry(self, x: float, y: float, yaw: float, linear: float, angular: float, stamp_ns: int, now_ns: int) -> None:
        values = np.array([x, y, yaw, linear, angular], dtype=float)
        if not np.all(np.isfinite(values)):
            raise MalformedMessageError("odometry has non-finite values")
        self._yaw = yaw if self._raw_yaw is None else self._yaw + wrap_angle(yaw - self._raw_yaw)
        self._raw_yaw = yaw
        self.odometry.add(OdometrySample(stamp_ns, np.array([x, y, self._yaw]), values[3:]), now_ns)

    def _arm(self, name: str) -> ArmLayout:
        for layout in self.layout.arms:
            if layout.name == name:
                return layout
        raise KeyError(f"unknown arm {name!r}; arms: {[a.name for a in self.layout.arms]}")

    def _required(self) -> list[_History]:
        return [*self.arms.values(), *([self.odometry] if self.odometry_required else [])]

    def ready(self) -> bool:
        """Every stream the controller needs has arrived at least once."""
        return all(history.received_ns is not None for history in self._required())

    def fresh(self, now_ns: int) -> bool:
        return all(
            history.received_ns is not None and now_ns - history.received_ns <= self.timeout_ns
            for history in self._required()
        )

    def _measured(self, arm_samples: Mapping[str, ArmSample | None], odometry: OdometrySample | None) -> np.ndarray:
        values = np.zeros(len(self.layout))
        for layout in self.layout.arms:
            sample = arm_samples[layout.name]
            if sample is None:
                continue
            values[layout.joint_index] = sample.joints
            if layout.gripper_index is not None and sample.gripper is not None:
                values[layout.gripper_index] = sample.gripper
        if self.layout.base is not None and odometry is not None:
            values[self.layout.base.command_index] = odometry.twist
        return values

    def measured(self) -> np.ndarray:
        """Latest measured command-space values (a base without odometry reads as standing still)."""
        return self._measured({name: h.latest() for name, h in self.arms.items()}, self.odometry.latest())

    def pose(self) -> np.ndarray | None:
        latest = self.odometry.latest()
        return None if latest is None else latest.pose

    def context(self, stamp_ns: int) -> ChunkContext:
        arm_samples = {name: history.at(stamp_ns) for name, history in self.arms.items()}
        odometry = self.odometry.at(stamp_ns)
        return ChunkContext(
            measured=self._measured(arm_samples, odometry),
            arm_joints={name: s.joints for name, s in arm_samples.items() if s is not None},
            pose=None if odometry is None else odometry.pose,
        )
