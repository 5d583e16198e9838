"""Gripper units: normalised 0 (closed) .. 1 (open) in actions and state, motor angle at the driver.

All constants come from the arm's ``gripper`` config; state is read from the finger
position or the motor joint, as ``state_from`` says.
"""
from __future__ import annotations

from collections.abc import Mapping

from qwen_vla_ros.config.base import Limits
from qwen_vla_ros.config.hardware import Gripper
from qwen_vla_ros.errors import MalformedMessageError


def lerp(close: float, open_: float, normalized: float) -> float:
    """Value at opening ``normalized`` between a closed and an open constant."""
    return close + normalized * (open_ - close)


def unlerp(close: float, open_: float, value: float) -> float:
    """Opening of ``value`` between a closed and an open constant."""
    return (value - close) / (open_ - close)


def normalized_to_joint(value: float, gripper: Gripper) -> float:
    return lerp(gripper.joint_close, gripper.joint_open, value)


def joint_to_normalized(angle: float, gripper: Gripper) -> float:
    return unlerp(gripper.joint_close, gripper.joint_open, angle)


def normalized_to_finger(value: float, gripper: Gripper) -> float:
    return lerp(gripper.finger_close, gripper.finger_open, value)


def finger_to_normalized(position: float, gripper: Gripper) -> float:
    return unlerp(gripper.finger_close, gripper.finger_open, position)


def state_joint_name(gripper: Gripper) -> str:
    """The joint-state entry the gripper opening is read from."""
    return gripper.finger_joint if gripper.state_from == "finger" else gripper.joint


def measured_normalized(positions: Mapping[str, float], gripper: Gripper) -> float:
    """Opening from a joint-state message (name -> position); MalformedMessageError names a missing joint."""
    name = state_joint_name(gripper)
    if name not in positions:
        raise MalformedMessageError(f"joint state has no {name!r} (gripper state_from={gripper.state_from!r})")
    value = positions[name]
    return finger_to_normalized(value, gripper) if gripper.state_from == "finger" else joint_to_normalized(value, gripper)


def normalized_limits(gripper: Gripper, channel: Limits) -> Limits:
    """The channel's bounds tightened so the motor angle also respects the motor joint's limits."""
    span = abs(gripper.joint_open - gripper.joint_close)
    # Rounded so that motor limits equal to the open/close constants map to exactly 0 and 1.
    ends = sorted(round(joint_to_normalized(b, gripper), 9) for b in (gripper.limits.lower, gripper.limits.upper))

    def tighter(mine: float | None, joint: float | None) -> float | None:
        scaled = None if joint is None else joint / span
        return scaled if mine is None else mine if scaled is None else min(mine, scaled)

    return Limits(
        lower=max(channel.lower, ends[0]),
        upper=min(channel.upper, ends[1]),
        velocity=tighter(channel.velocity, gripper.limits.velocity),
        acceleration=tighter(channel.acceleration, gripper.limits.acceleration),
    )
