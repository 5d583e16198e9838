"""The proprioceptive state vector, in the embodiment's state channel order, from raw readings.

Readings are what the drivers publish: per arm a joint-state mapping (name -> position, the
Interbotix layout with finger positions in metres), and for a base its odometry velocities.
Every channel source of the config is served: a joint, the gripper (normalised from the
finger or motor position with the arm's calibration), an end-effector pose component
(forward kinematics of the arm's joints), an odometry field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.spaces import EndEffectorSource, GripperSource, JointSource, OdometrySource
from qwen_vla_ros.embodiments.gripper import measured_normalized
from qwen_vla_ros.embodiments.ik import pose_to_xyzrpy
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.errors import MalformedMessageError

BASE = "base"  # the reading key of odometry, beside the arm names
POSE_COMPONENTS = ("x", "y", "z", "roll", "pitch", "yaw")


@dataclass(frozen=True)
class Odometry:
    linear_x: float
    angular_z: float


def pose_components(pose: np.ndarray) -> dict[str, float]:
    """x, y, z and extrinsic x-y-z roll, pitch, yaw: the BridgeData convention of the deltas."""
    return dict(zip(POSE_COMPONENTS, (float(v) for v in pose_to_xyzrpy(pose)), strict=True))


class StateAssembler:
    """Builds the state vector; knows which readings (arms, base) it needs."""

    def __init__(self, config: EmbodimentConfig) -> None:
        self.config = config
        self.names = config.state.names
        sources = [c.source for c in config.state.channels]
        self.arms = tuple(dict.fromkeys(s.arm for s in sources if not isinstance(s, OdometrySource)))
        self.needs_base = any(isinstance(s, OdometrySource) for s in sources)
        self._kinematics = {
            s.arm: ArmKinematics.from_config(config.arm(s.arm)) for s in sources if isinstance(s, EndEffectorSource)
        }

    @property
    def readings(self) -> tuple[str, ...]:
        """Keys the assembler reads: arm names, then ``base`` when odometry is used."""
        return self.arms + ((BASE,) if self.needs_base else ())

    def assemble(self, joints: Mapping[str, Mapping[str, float]], odometry: Odometry | None) -> np.ndarray:
        """State in robot units. MalformedMessageError names a joint or reading that is missing, or
        channels that are not finite."""
        poses: dict[str, dict[str, float]] = {}
        values = np.empty(len(self.names), dtype=np.float64)
        for index, channel in enumerate(self.config.state.channels):
            source = channel.source
            if isinstance(source, OdometrySource):
                if odometry is None:
                    raise MalformedMessageError(f"state channel {channel.name!r} needs odometry and none was received")
                values[index] = getattr(odometry, source.field)
                continue
            positions = joints.get(source.arm)
            if positions is None:
                raise MalformedMessageError(f"state channel {channel.name!r} needs joint states of arm {source.arm!r}")
            if isinstance(source, JointSource):
                values[index] = _position(positions, source.joint, source.arm)
            elif isinstance(source, GripperSource):
                values[index] = self._gripper(source.arm, positions)
            elif isinstance(source, EndEffectorSource):
                if source.arm not in poses:
                    poses[source.arm] = self._pose(source.arm, positions)
                values[index] = poses[source.arm][source.component]
        bad = [self.names[i] for i in np.flatnonzero(~np.isfinite(values))]
        if bad:
            raise MalformedMessageError(f"state channel(s) {bad} are not finite")
        return values

    def _gripper(self, arm_name: str, positions: Mapping[str, float]) -> float:
        gripper = self.config.arm(arm_name).gripper
        if gripper is None:
            raise KeyError(f"arm {arm_name!r} has no gripper to read")
        try:
            return measured_normalized(positions, gripper)
        except MalformedMessageError as exc:
            raise MalformedMessageError(f"arm {arm_name!r}: {exc}; it has {sorted(positions)}") from None

    def _pose(self, arm_name: str, positions: Mapping[str, float]) -> dict[str, float]:
        arm = self.config.arm(arm_name)
        joints = np.array([_position(positions, name, arm_name) for name in arm.joint_names])
        return pose_components(self._kinematics[arm_name].forward(joints))


def _position(positions: Mapping[str, float], joint: str, arm: str) -> float:
    try:
        return float(positions[joint])
    except KeyError:
        raise MalformedMessageError(f"joint state of arm {arm!r} has no joint {joint!r}; it has {sorted(positions)}") from None
