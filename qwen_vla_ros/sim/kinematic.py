"""Kinematic simulators in the spirit of ros2_control's mock hardware.

No dynamics: a joint moves toward its latest command as fast as the config's velocity and
acceleration limits allow, and stops on the target without overshoot; a differential base
integrates its velocity command the same way and dead-reckons its pose. Enough to close the
loop for WidowX and mobile-base policies on a machine without the robot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.config.base import Limits
from qwen_vla_ros.config.hardware import Arm, Base
from qwen_vla_ros.embodiments.gripper import (
    joint_to_normalized,
    normalized_to_finger,
    normalized_to_joint,
)
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.sim.commands import ArmCommand, ArmState, state_joint_names


def _rate(limit: float | None) -> float:
    return math.inf if limit is None else limit


def limited_step(
    position: np.ndarray, velocity: np.ndarray, target: np.ndarray, dt: float, max_velocity: np.ndarray,
    max_acceleration: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step toward ``target`` within velocity and acceleration bounds, braking in time to stop on it.

    The desired speed is the largest from which braking at ``max_acceleration`` in whole
    steps still stops on the target (v^2/2a + v dt/2 <= distance), and that does not pass it
    within this step (distance / dt); acceleration then bounds the change of speed.
    """
    error = target - position
    distance = np.abs(error)
    half_step = 0.5 * max_acceleration * dt
    with np.errstate(invalid="ignore"):
        braking = np.sqrt(half_step**2 + 2.0 * max_acceleration * distance) - half_step
    desired = np.sign(error) * np.minimum.reduce([max_velocity, np.nan_to_num(braking, nan=np.inf), distance / dt])
    change = np.clip(desired - velocity, -max_acceleration * dt, max_acceleration * dt)
    new_velocity = velocity + np.nan_to_num(change, nan=0.0)
    return position + new_velocity * dt, new_velocity


@dataclass
class _LimitedAxes:
    """Positions that follow targets within limits; ``lower``/``upper`` clip the targets."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    target: np.ndarray

    @classmethod
    def from_limits(cls, limits: list[Limits], initial: np.ndarray) -> _LimitedAxes:
        lower = np.array([lim.lower for lim in limits])
        upper = np.array([lim.upper for lim in limits])
        start = np.clip(np.asarray(initial, dtype=float), lower, upper)
        return cls(
            lower, upper, np.array([_rate(lim.velocity) for lim in limits]),
            np.array([_rate(lim.acceleration) for lim in limits]), start.copy(), np.zeros_like(start), start.copy(),
        )

    def set_target(self, index: int, value: float) -> None:
        self.target[index] = np.clip(value, self.lower[index], self.upper[index])

    def step(self, dt: float) -> None:
        self.position, self.velocity = limited_step(
            self.position, self.velocity, self.target, dt, self.max_velocity, self.max_acceleration
        )


class KinematicArm:
    """One Interbotix-style arm: joints and gripper motor follow commands within the config's limits."""

    def __init__(self, arm: Arm, initial_joints: list[float] | None, initial_gripper: float) -> None:
        self.arm = arm
        self._initial = np.zeros(len(arm.joints)) if initial_joints is None else np.asarray(initial_joints, float)
        self._initial_gripper = initial_gripper
        self._index = {name: i for i, name in enumerate(arm.joint_names)}
        self.reset()

    def reset(self) -> None:
        limits = [j.limits for j in self.arm.joints]
        initial = list(self._initial)
        if self.arm.gripper is not None:
            limits.append(self.arm.gripper.limits)
            initial.append(normalized_to_joint(self._initial_gripper, self.arm.gripper))
        self._axes = _LimitedAxes.from_limits(limits, np.asarray(initial))

    def command(self, command: ArmCommand) -> None:
        for name, value in command.joints.items():
            self._axes.set_target(self._index[name], value)
        if command.gripper_angle is not None and self.arm.gripper is not None:
            self._axes.set_target(len(self.arm.joints), command.gripper_angle)

    def step(self, dt: float) -> None:
        self._axes.step(dt)

    @property
    def joint_positions(self) -> np.ndarray:
        return self._axes.position[: len(self.arm.joints)].copy()

    @property
    def gripper_normalized(self) -> float | None:
        if self.arm.gripper is None:
            return None
        return joint_to_normalized(float(self._axes.position[-1]), self.arm.gripper)

    def state(self) -> ArmState:
        position = list(self._axes.position)
        velocity = list(self._axes.velocity)
        gripper = self.arm.gripper
        if gripper is not None:
            opening = joint_to_normalized(position[-1], gripper)
            finger = normalized_to_finger(opening, gripper)
            finger_speed = velocity[-1] * (gripper.finger_open - gripper.finger_close) / (
                gripper.joint_open - gripper.joint_close
            )
            position += [finger, -finger]
            velocity += [finger_speed, -finger_speed]
        names = state_joint_names(self.arm)
        return ArmState(names, np.array(position), np.array(velocity), np.zeros(len(names)))


@dataclass(frozen=True)
class BaseState:
    """Pose in the odometry frame and velocity in the base frame."""

    x: float
    y: float
    yaw: float
    linear: float
    angular: float


class KinematicBase:
    """Differential drive: clips Twist to the base limits, ramps within its accelerations, and
    stops ``timeout_s`` after the last command like the SLATE driver."""

    def __init__(self, base: Base, timeout_s: float) -> None:
        self.base = base
        self.timeout_s = timeout_s
        self.reset()

    def reset(self) -> None:
        # The speeds are the integrated quantity: their rate bound is the base's acceleration.
        self._speed = _LimitedAxes(
            lower=np.array([-self.base.max_linear, -self.base.max_angular]),
            upper=np.array([self.base.max_linear, self.base.max_angular]),
            max_velocity=np.array([self.base.linear_acceleration, self.base.angular_acceleration]),
            max_acceleration=np.array([math.inf, math.inf]),
            position=np.zeros(2), velocity=np.zeros(2), target=np.zeros(2),
        )
        self._pose = np.zeros(3)
        self._last_command_s: float | None = None

    def command(self, linear: float, angular: float, now_s: float) -> None:
        if not (math.isfinite(linear) and math.isfinite(angular)):
            raise MalformedMessageError(f"Twist must be finite, got linear.x={linear}, angular.z={angular}")
        self._speed.set_target(0, linear)
        self._speed.set_target(1, angular)
        self._last_command_s = now_s

    def step(self, dt: float, now_s: float) -> None:
        if self._last_command_s is None or now_s - self._last_command_s > self.timeout_s:
            self._speed.target[:] = 0.0
        self._speed.step(dt)
        linear, angular = self._speed.position
        # Midpoint heading integrates arcs without drift for constant (v, w).
        heading = self._pose[2] + 0.5 * angular * dt
        self._pose += (linear * math.cos(heading) * dt, linear * math.sin(heading) * dt, angular * dt)
        self._pose[2] = math.atan2(math.sin(self._pose[2]), math.cos(self._pose[2]))

    def state(self) -> BaseState:
        x, y, yaw = self._pose
        linear, angular = self._speed.position
        return BaseState(float(x), float(y), float(yaw), float(linear), float(angular))
