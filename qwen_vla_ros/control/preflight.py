"""Interbotix preflight: does each xs_sdk driver mean by our commands what the config means?

The controller sends an ``interbotix`` output's arm group joint angles in the config's joint
order and the gripper a motor angle. That is only safe when the driver's arm group is in
``position`` mode, its gripper in a mode that reads a motor angle, its joints are the
config's, in the config's order, and the config's limits lie inside the limits the driver
enforces itself. This module compares what the driver answered (``get_robot_info``, one
joint-state message) with the config; ``nodes.interbotix_driver`` asks the driver and
turns the answers into :class:`DriverInfo`. No ROS here.

It also plans what ``configure_robot:=true`` writes (:func:`configure_writes`), so the
node only translates the plan into service calls.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qwen_vla_ros.config.hardware import Arm, InterbotixOutput
from qwen_vla_ros.errors import QwenVlaError

GROUP, SINGLE = "group", "single"  # RobotInfo / OperatingModes / RegisterValues cmd_type values


@dataclass(frozen=True)
class DriverInfo:
    """The fields of one xs_sdk ``RobotInfo`` answer that the preflight reads.

    For the gripper the driver answers with its left finger joint's limits and joint-state
    index (the motor angle has none of its own there).
    """

    mode: str
    joint_names: tuple[str, ...]
    lower_limits: tuple[float, ...]
    upper_limits: tuple[float, ...]
    velocity_limits: tuple[float, ...]
    state_indices: tuple[int, ...]
    sleep_positions: tuple[float, ...] = ()


@dataclass(frozen=True)
class ArmAnswers:
    """What one arm's driver answered; ``None`` where it did not answer within the timeout."""

    group: DriverInfo | None
    gripper: DriverInfo | None
    joint_state_names: tuple[str, ...] | None


@dataclass(frozen=True)
class Mismatch:
    """One disagreement: the arm, the joint (or group), what was compared and both values."""

    arm: str
    joint: str
    check: str
    config: str
    driver: str

    def __str__(self) -> str:
        return f"arm {self.arm!r}, joint {self.joint!r}: {self.check}: config {self.config}, driver {self.driver}"


class PreflightRefused(QwenVlaError, RuntimeError):
    """The driver and the config disagree; the controller does not command. The message lists every mismatch."""

    def __init__(self, mismatches: Sequence[Mismatch]):
        self.mismatches = list(mismatches)
        super().__init__(refusal_message(self.mismatches))


def refusal_message(mismatches: Sequence[Mismatch]) -> str:
    """The one message an operator reads: every mismatch, then what was refused."""
    lines = "; ".join(str(m) for m in mismatches)
    return f"Interbotix preflight refused, no command will be sent: {lines}"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _limit_mismatches(arm: Arm, output: InterbotixOutput, group: DriverInfo) -> list[Mismatch]:
    """Each config limit must lie inside the driver's: lower not below, upper and velocity not above."""
    tolerance = output.preflight.limit_tolerance
    driver_index = {name: i for i, name in enumerate(group.joint_names)}
    found = []
    for joint in arm.joints:
        i = driver_index.get(joint.name)
        if i is None or i >= min(len(group.lower_limits), len(group.upper_limits), len(group.velocity_limits)):
            continue  # reported as a name mismatch
        limits = joint.limits
        if limits.lower < group.lower_limits[i] - tolerance:
            found.append(Mismatch(arm.name, joint.name, "lower limit (rad)", _fmt(limits.lower),
                                  _fmt(group.lower_limits[i])))
        if limits.upper > group.upper_limits[i] + tolerance:
            found.append(Mismatch(arm.name, joint.name, "upper limit (rad)", _fmt(limits.upper),
                                  _fmt(group.upper_limits[i])))
        if limits.velocity is not None and limits.velocity > group.velocity_limits[i] + tolerance:
            found.append(Mismatch(arm.name, joint.name, "velocity limit (rad/s)", _fmt(limits.velocity),
                                  _fmt(group.velocity_limits[i])))
    return found


def _state_index_mismatches(arm_name: str, joints: Sequence[tuple[str, str]], info: DriverInfo,
                            state_names: tuple[str, ...]) -> list[Mismatch]:
    """``joints`` pairs (joint, name expected in the joint-state message at the driver's index for it)."""
    found = []
    for position, (joint, expected) in enumerate(joints):
        if position >= len(info.state_indices):
            found.append(Mismatch(arm_name, joint, "joint-state index", f"{expected!r} in the message", "none"))
            continue
        index = info.state_indices[position]
        actual = state_names[index] if 0 <= index < len(state_names) else f"index {index} of {len(state_names)}"
        if actual != expected:
            found.append(Mismatch(arm_name, joint, f"joint-state entry at driver index {index}", repr(expected),
                                  repr(actual)))
    return found


def check_arm(arm: Arm, output: InterbotixOutput, answers: ArmAnswers) -> list[Mismatch]:
    """Every way ``answers`` disagrees with ``arm`` as ``output`` commands it; empty when commanding is safe."""
    preflight = output.preflight
    silent = f"no answer within {preflight.timeout_s:g} s"
    found: list[Mismatch] = []
    if answers.joint_state_names is None:
        found.append(Mismatch(arm.name, "joint_states", f"a message on {arm.joint_state_topic}", "expected", silent))
    group = answers.group
    if group is None:
        found.append(Mismatch(arm.name, output.group_name, f"get_robot_info (group {output.group_name!r})", "expected",
                              silent))
    else:
        if group.mode != preflight.arm_mode:
            found.append(Mismatch(arm.name, output.group_name, "operating mode", preflight.arm_mode, group.mode))
        if list(group.joint_names) != arm.joint_names:
            for position in range(max(len(group.joint_names), len(arm.joint_names))):
                ours = arm.joint_names[position] if position < len(arm.joint_names) else "(none)"
                theirs = group.joint_names[position] if position < len(group.joint_names) else "(none)"
                if ours != theirs:
                    found.append(Mismatch(arm.name, ours, f"joint name at group position {position}", ours, theirs))
        found += _limit_mismatches(arm, output, group)
        if answers.joint_state_names is not None and list(group.joint_names) == arm.joint_names:
            found += _state_index_mismatches(arm.name, [(j, j) for j in arm.joint_names], group,
                                             answers.joint_state_names)
    gripper = arm.gripper
    if gripper is None:
        return found
    info = answers.gripper
    if info is None:
        found.append(Mismatch(arm.name, gripper.joint, f"get_robot_info (single {output.gripper_name!r})",
                              "expected", silent))
        return found
    if info.mode != preflight.gripper_mode:
        found.append(Mismatch(arm.name, gripper.joint, "operating mode", preflight.gripper_mode, info.mode))
    if list(info.joint_names) != [gripper.joint]:
        found.append(Mismatch(arm.name, gripper.joint, "joint name", repr([gripper.joint]), repr(list(info.joint_names))))
    elif answers.joint_state_names is not None:
        # The driver reports the gripper by its left finger: that entry is the finger joint the config reads.
        found += _state_index_mismatches(arm.name, [(gripper.joint, gripper.finger_joint)], info,
                                         answers.joint_state_names)
    return found


@dataclass(frozen=True)
class ModeWrite:
    """One ``set_operating_modes`` request."""

    cmd_type: str
    name: str
    mode: str
    profile_type: str
    profile_velocity: int
    profile_acceleration: int


@dataclass(frozen=True)
class RegisterWrite:
    """One ``set_motor_registers`` request."""

    cmd_type: str
    name: str
    reg: str
    value: int


def configure_writes(arm: Arm, output: InterbotixOutput) -> list[ModeWrite | RegisterWrite]:
    """What ``configure_robot:=true`` writes to ``arm``'s motors, in order: the arm group's mode,
    then (with a gripper) the gripper's mode and its current limit."""
    configure, preflight = output.configure, output.preflight
    profile = (configure.profile_type, configure.profile_velocity, configure.profile_acceleration)
    writes: list[ModeWrite | RegisterWrite] = [ModeWrite(GROUP, output.group_name, preflight.arm_mode, *profile)]
    if arm.gripper is not None:
        writes.append(ModeWrite(SINGLE, output.gripper_name, preflight.gripper_mode, *profile))
        writes.append(RegisterWrite(SINGLE, output.gripper_name, configure.gripper_current_register,
                                    configure.gripper_current_limit))
    return writes
