"""What the simulated drivers accept and report, independent of the message types that carry it.

The controller's command adapters (docs/architecture.md, "Command adapters") encode arm
targets three ways; these decoders turn each payload back into one :class:`ArmCommand`, so
every simulator honours exactly the interfaces a real driver or ros2_control controller does.
A payload that a real driver would reject raises ``MalformedMessageError`` naming what is wrong.
:func:`command_routes` says on which topics, through which interface, each arm is commanded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qwen_vla_ros.config import ConfigError, EmbodimentConfig
from qwen_vla_ros.config.hardware import Arm, ForwardCommandOutput, InterbotixOutput, JointTrajectoryOutput, TwistOutput
from qwen_vla_ros.errors import MalformedMessageError

# The Interbotix driver appends both finger joints (linear, metres) after the gripper joint.
INTERBOTIX_FINGERS = ("left_finger", "right_finger")
FORWARD_COMMAND_OVERRIDE = "outputs=[{adapter: forward_command, arms: [%s]}]"
Interface = Literal["forward_command", "joint_trajectory", "joint_group", "joint_single"]


@dataclass(frozen=True)
class ArmCommand:
    """Targets for some of an arm's joints (rad) and, optionally, its gripper motor angle (rad)."""

    joints: dict[str, float] = field(default_factory=dict)
    gripper_angle: float | None = None


@dataclass(frozen=True)
class ArmState:
    """One arm's joint state in the Interbotix driver's layout (see :func:`state_joint_names`)."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


def state_joint_names(arm: Arm) -> tuple[str, ...]:
    """``waist .. wrist_rotate, gripper, left_finger, right_finger`` as the Interbotix driver publishes."""
    names = tuple(arm.joint_names)
    if arm.gripper is not None:
        names += (arm.gripper.joint, *INTERBOTIX_FINGERS)
    return names


def _finite(values: Sequence[float], what: str) -> list[float]:
    numbers = [float(v) for v in values]
    bad = [i for i, v in enumerate(numbers) if not math.isfinite(v)]
    if bad:
        raise MalformedMessageError(f"{what} has non-finite values at indices {bad}: {numbers}")
    return numbers


def decode_forward_command(data: Sequence[float], arm: Arm) -> ArmCommand:
    """``forward_command``: the arm joints in driver order, then the gripper motor angle."""
    expected = len(arm.joints) + (1 if arm.gripper is not None else 0)
    if len(data) != expected:
        raise MalformedMessageError(
            f"forward_command for arm {arm.name!r} needs {expected} values "
            f"({', '.join(arm.joint_names)}{', gripper' if arm.gripper else ''}), got {len(data)}"
        )
    values = _finite(data, f"forward_command for arm {arm.name!r}")
    joints = dict(zip(arm.joint_names, values, strict=False))
    return ArmCommand(joints, values[-1] if arm.gripper is not None else None)


def decode_joint_trajectory(joint_names: Sequence[str], points: Sequence[Sequence[float]], arm: Arm) -> ArmCommand:
    """``joint_trajectory``: one point; names are driver joint names and the gripper joint, no prefix."""
    if len(points) != 1:
        raise MalformedMessageError(f"joint_trajectory for arm {arm.name!r} must have exactly one point, got {len(points)}")
    positions = points[0]
    if len(positions) != len(joint_names):
        raise MalformedMessageError(f"joint_trajectory has {len(joint_names)} joint names but {len(positions)} positions")
    gripper_joint = arm.gripper.joint if arm.gripper is not None else None
    known = set(arm.joint_names) | ({gripper_joint} if gripper_joint else set())
    unknown = [n for n in joint_names if n not in known]
    if unknown:
        raise MalformedMessageError(
            f"joint_trajectory names joints {unknown} that arm {arm.name!r} does not have: {sorted(known)}")
    values = dict(zip(joint_names, _finite(positions, f"joint_trajectory for arm {arm.name!r}"), strict=True))
    gripper_angle = values.pop(gripper_joint, None) if gripper_joint else None
    return ArmCommand(values, gripper_angle)


def decode_joint_group(name: str, cmd: Sequence[float], arm: Arm, group_name: str) -> ArmCommand:
    """Interbotix ``JointGroupCommand``: the named group's joints in driver order."""
    if name != group_name:
        raise MalformedMessageError(f"JointGroupCommand for unknown group {name!r}; arm {arm.name!r} has group {group_name!r}")
    if len(cmd) != len(arm.joints):
        raise MalformedMessageError(f"JointGroupCommand {name!r} needs {len(arm.joints)} values, got {len(cmd)}")
    return ArmCommand(dict(zip(arm.joint_names, _finite(cmd, f"JointGroupCommand {name!r}"), strict=True)))


def decode_joint_single(name: str, cmd: float, arm: Arm, gripper_name: str) -> ArmCommand:
    """Interbotix ``JointSingleCommand``: the gripper motor angle, or one arm joint by name."""
    (value,) = _finite([cmd], f"JointSingleCommand {name!r}")
    if arm.gripper is not None and name == gripper_name:
        return ArmCommand(gripper_angle=value)
    if name in arm.joint_names:
        return ArmCommand({name: value})
    raise MalformedMessageError(f"JointSingleCommand for unknown joint {name!r} on arm {arm.name!r}")


@dataclass(frozen=True)
class CommandRoute:
    """One topic the sim takes an arm's commands on, and the interface (decoder) they come through."""

    topic: str
    arm: Arm
    interface: Interface
    name: str = ""  # the Interbotix group (joint_group) or gripper (joint_single) name


def command_routes(config: EmbodimentConfig, interbotix: bool) -> list[CommandRoute]:
    """The arm-command topics of the embodiment's ``outputs`` (twist outputs are the base's, not here).

    ``interbotix``: whether the Interbotix messages can be imported; without them their outputs
    are left out. ConfigError when an arm is left with no command topic: the sim would hold it
    still while the controller believes it commands it; where Interbotix is the cause, the
    error names the override that gives every arm a forward_command topic instead.
    """
    routes: list[CommandRoute] = []
    missing_interbotix = []
    for output in config.outputs:
        if isinstance(output, TwistOutput):
            continue
        for arm_name in output.arms:
            arm = config.arm(arm_name)
            if isinstance(output, ForwardCommandOutput):
                routes.append(CommandRoute(output.topic.format(namespace=arm.namespace), arm, "forward_command"))
            elif isinstance(output, JointTrajectoryOutput):
                routes.append(CommandRoute(output.topic.format(namespace=arm.namespace), arm, "joint_trajectory"))
            elif isinstance(output, InterbotixOutput):
                if not interbotix:
                    missing_interbotix.append(arm_name)
                    continue
                routes += [
                    CommandRoute(output.group_topic.format(namespace=arm.namespace), arm, "joint_group", output.group_name),
                    CommandRoute(output.single_topic.format(namespace=arm.namespace), arm, "joint_single",
                                 output.gripper_name),
                ]
    commanded = {route.arm.name for route in routes}
    uncommanded = [a.name for a in config.arms if a.name not in commanded]
    if uncommanded:
        problems = [f"arms {uncommanded} have no command interface the sim can subscribe to"]
        if missing_interbotix:
            problems.append(
                "interbotix_xs_msgs is not importable here; start the sim with config_overrides "
                f"['{FORWARD_COMMAND_OVERRIDE % ', '.join(a.name for a in config.arms)}'] "
                "and run the controller with the same override"
            )
        raise ConfigError(f"{config.name} outputs", problems)
    return routes
