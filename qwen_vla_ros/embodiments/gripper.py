"""Gripper unit conversions: normalised opening 0 (closed) .. 1 (open) <-> motor angle <-> finger position.

Actions and state carry the normalised value; drivers take the motor angle and report finger
positions in metres. All constants come from the arm's ``Gripper`` config, so a rig with other
calibration (e.g. the original ALOHA puppet) changes YAML, not code.
"""
from __future__ import annotations

from qwen_vla_ros.config.embodiment import Gripper


def lerp(close: float, open_: float, normalized: float) -> float:
    return close + normalized * (open_ - close)


def unlerp(close: float, open_: float, value: float) -> float:
    return (value - close) / (open_ - close)


def motor_from_normalized(normalized: float, gripper: Gripper) -> float:
    return lerp(gripper.joint_close, gripper.joint_open, normalized)


def normalized_from_motor(angle: float, gripper: Gripper) -> float:
    return unlerp(gripper.joint_close, gripper.joint_open, angle)


def finger_from_normalized(normalized: float, gripper: Gripper) -> float:
    return lerp(gripper.finger_close, gripper.finger_open, normalized)


def normalized_from_finger(position: float, gripper: Gripper) -> float:
    return unlerp(gripper.finger_close, gripper.finger_open, position)
