"""Command space: the vector the controller limits every period and the adapters send.

It follows the action channels in order, with two substitutions where the policy does not
speak in driver units: an end-effector-delta arm contributes its joints (named with the
arm's URDF prefix), and a waypoint base contributes ``base_linear``/``base_angular``.
Grippers stay normalised; adapters convert to the motor angle. Each command channel gets
the tightest limits that config implies (action channel, driver joint, gripper motor, base).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.config.base import Limits
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import Arm, Base, Gripper
from qwen_vla_ros.config.loader import ConfigError
from qwen_vla_ros.embodiments.gripper import normalized_limits, normalized_to_joint

WAYPOINT_COMMAND_CHANNELS = ("base_linear", "base_angular")


def _joint_channels(arm: Arm) -> list[str]:
    """The action channel of each joint of an arm driven joint by joint (the config requires one per joint)."""
    channels = [j.channel for j in arm.joints if j.channel is not None]
    if len(channels) != len(arm.joints):
        raise ValueError(f"arm {arm.name!r} is driven joint by joint but has joints without an action channel")
    return channels


@dataclass(frozen=True)
class ArmLayout:
    arm: Arm
    joint_index: np.ndarray  # command indices of the arm joints, in driver order
    gripper_index: int | None  # command index of the normalised gripper
    joint_action: np.ndarray | None  # action indices driving the joints directly (driver order)
    ee_action: np.ndarray | None  # action indices of [dx, dy, dz, droll, dpitch, dyaw]
    gripper_action: int | None

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def gripper(self) -> Gripper | None:
        return self.arm.gripper


@dataclass(frozen=True)
class BaseLayout:
    base: Base
    command_index: np.ndarray  # (v, omega)
    action_index: np.ndarray  # (v, omega) for twist, (x, y, yaw) for waypoints

    @property
    def waypoints(self) -> bool:
        return self.base.mode == "waypoints"


def _tightest(limits: list[Limits]) -> tuple[float, float, float, float]:
    velocities = [lim.velocity for lim in limits if lim.velocity is not None]
    accelerations = [lim.acceleration for lim in limits if lim.acceleration is not None]
    return (
        max(lim.lower for lim in limits),
        min(lim.upper for lim in limits),
        min(velocities, default=np.inf),
        min(accelerations, default=np.inf),
    )


class CommandLayout:
    """Names, limits and per-arm/base index maps of an embodiment's command vector."""

    def __init__(self, config: EmbodimentConfig):
        action = {name: i for i, name in enumerate(config.action.names)}
        channel_limits = {c.name: c.limits for c in config.action.channels}
        names: list[str] = []
        bounds: list[tuple[float, float, float, float]] = []
        velocity_channel: list[bool] = []

        def add(name: str, limits: list[Limits], is_velocity: bool = False) -> int:
            if name in names:
                raise ConfigError(config.name, [
                    f"arms: command channel {name!r} appears twice; give the arms distinct urdf_prefix values"])
            names.append(name)
            bounds.append(_tightest(limits))
            velocity_channel.append(is_velocity)
            return len(names) - 1

        owner: dict[str, Arm | Base] = {}
        for arm in config.arms:
            for joint in arm.joints:
                if joint.channel is not None:
                    owner[joint.channel] = arm
            for name in arm.ee_delta.channels if arm.ee_delta else []:
                owner[name] = arm
            if arm.gripper is not None and arm.gripper.channel is not None:
                owner[arm.gripper.channel] = arm
        if config.base is not None:
            for name in config.base.channels:
                owner[name] = config.base

        joint_index: dict[str, dict[str, int]] = {arm.name: {} for arm in config.arms}
        gripper_index: dict[str, int] = {}
        base_index: list[int] = []
        for channel in config.action.names:
            part = owner[channel]
            if isinstance(part, Base):
                if part.mode == "twist":
                    axis_max, axis_acc = (
                        (part.max_linear, part.linear_acceleration)
                        if channel == part.channels[0]
                        else (part.max_angular, part.angular_acceleration)
                    )
                    base_limit = Limits(lower=-axis_max, upper=axis_max, velocity=axis_acc)
                    base_index.append(add(channel, [channel_limits[channel], base_limit], True))
                elif channel == part.channels[0]:
                    for name, axis_max, axis_acc in zip(
                        WAYPOINT_COMMAND_CHANNELS,
                        (part.max_linear, part.max_angular),
                        (part.linear_acceleration, part.angular_acceleration), strict=True,
                    ):
                        base_index.append(add(name, [Limits(lower=-axis_max, upper=axis_max, velocity=axis_acc)], True))
                continue
            arm = part
            if arm.gripper is not None and channel == arm.gripper.channel:
                gripper_index[arm.name] = add(channel, [normalized_limits(arm.gripper, channel_limits[channel])])
            elif arm.ee_delta is None:
                joint = next(j for j in arm.joints if j.channel == channel)
                joint_index[arm.name][joint.name] = add(channel, [channel_limits[channel], joint.limits])
            elif channel == arm.ee_delta.channels[0]:
                for joint in arm.joints:
                    joint_index[arm.name][joint.name] = add(arm.urdf_prefix + joint.name, [joint.limits])

        self.names: tuple[str, ...] = tuple(names)
        table = np.array(bounds, dtype=float).reshape(len(names), 4)
        self.lower, self.upper, self.velocity, self.acceleration = (table[:, i].copy() for i in range(4))
        self.velocity_channel = np.array(velocity_channel, dtype=bool)
        """Channels whose value is itself a velocity (a base): they stop at zero, not in place."""

        self.arms: tuple[ArmLayout, ...] = tuple(
            ArmLayout(
                arm=arm,
                joint_index=np.array([joint_index[arm.name][j.name] for j in arm.joints]),
                gripper_index=gripper_index.get(arm.name),
                joint_action=None if arm.ee_delta else np.array([action[c] for c in _joint_channels(arm)]),
                ee_action=np.array([action[c] for c in arm.ee_delta.channels]) if arm.ee_delta else None,
                gripper_action=action[arm.gripper.channel] if arm.gripper and arm.gripper.channel else None,
            )
            for arm in config.arms
        )
        self.base: BaseLayout | None = (
            BaseLayout(config.base, np.array(base_index), np.array([action[c] for c in config.base.channels]))
            if config.base is not None
            else None
        )

    def __len__(self) -> int:
        return len(self.names)

    def clamp(self, values: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(values, self.lower), self.upper)  # np.clip costs twice as much

    def arm_command(self, values: np.ndarray, arm: ArmLayout) -> tuple[np.ndarray, float | None]:
        """Driver joint angles (rad) and the gripper motor angle (rad, None without a gripper)."""
        joints = values[arm.joint_index]
        if arm.gripper is None or arm.gripper_index is None:
            return joints, None
        return joints, normalized_to_joint(float(values[arm.gripper_index]), arm.gripper)

    def base_command(self, values: np.ndarray) -> tuple[float, float]:
        if self.base is None:
            raise ValueError("this embodiment has no base")
        linear, angular = values[self.base.command_index]
        return float(linear), float(angular)
