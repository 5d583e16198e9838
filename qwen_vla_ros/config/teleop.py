"""Joystick and leader-arm teleoperation: buttons, base and arm jog mappings, leader follow."""
from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, model_validator

from qwen_vla_ros.config.base import StrictModel


class AxisButton(StrictModel):
    """An axis read as a button, for the controls a pad reports as axes (an Xbox pad's triggers
    and d-pad on joydev), once its 11 buttons are all taken.

    Pressed while the axis lies beyond ``threshold``, on the threshold's side of zero:
    joy_node's triggers rest at +1 and read -1 fully pulled, so ``{axis: 2, threshold: -0.5}``
    is "left trigger pulled half way"; d-pad up is ``{axis: 7, threshold: 0.5}``.
    """

    axis: int = Field(ge=0)
    threshold: float = Field(ge=-1.0, le=1.0)

    @model_validator(mode="after")
    def _sided(self) -> AxisButton:
        if self.threshold == 0.0:
            raise ValueError("an axis button's threshold must be non-zero: its sign says which way is 'pressed'")
        return self

    def pressed(self, value: float) -> bool:
        return value <= self.threshold if self.threshold < 0 else value >= self.threshold


Button = Annotated[int, Field(ge=0)] | AxisButton


class TeleopButtons(StrictModel):
    """Joy button indices (joy_node / Linux joydev numbering, see README "Teleoperation"), or
    :class:`AxisButton` for a control the pad reports as an axis.

    ``deadman`` is held to drive; ``resume_policy`` hands control back to the policy;
    ``estop`` latches the e-stop. ``arm_select`` cycles the jogged arm and ``jog_mode``
    toggles Cartesian / joint jog. Trial buttons call the trial recorder's services.
    """

    deadman: Button
    resume_policy: Button
    estop: Button
    turbo: Button | None = None
    gripper_open: Button | None = None
    gripper_close: Button | None = None
    arm_select: Button | None = None
    jog_mode: Button | None = None
    trial_start: Button | None = None
    trial_success: Button | None = None
    trial_failure: Button | None = None
    trial_abort: Button | None = None

    def bound(self) -> dict[str, int | AxisButton]:
        return {name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None}

    @model_validator(mode="after")
    def _distinct(self) -> TeleopButtons:
        def control(binding: int | AxisButton) -> str:  # two axis buttons may share an axis on opposite sides
            if isinstance(binding, int):
                return f"button {binding}"
            return f"axis {binding.axis}{'+' if binding.threshold > 0 else '-'}"

        controls: dict[str, list[str]] = {}
        for name, binding in self.bound().items():
            controls.setdefault(control(binding), []).append(name)
        clashes = {where: names for where, names in controls.items() if len(names) > 1}
        if clashes:
            raise ValueError(f"buttons bound to more than one function: {clashes}")
        return self

    @property
    def axes(self) -> list[int]:
        """Axes read as buttons."""
        return [b.axis for b in self.bound().values() if isinstance(b, AxisButton)]

    @property
    def max_button(self) -> int:
        return max((b for b in self.bound().values() if isinstance(b, int)), default=-1)


JogAxes = list[Annotated[int, Field(ge=0)] | None]


def _no_rotation_axes() -> list[int | None]:
    return [None, None, None]


class TeleopBase(StrictModel):
    """teleop_twist_joy's mapping: linear.x = scale_linear * axis, angular.z = scale_angular * axis."""

    axis_linear: int = Field(ge=0)
    axis_angular: int = Field(ge=0)
    scale_linear: float = Field(gt=0, description="m/s at full deflection")
    scale_angular: float = Field(gt=0, description="rad/s at full deflection")
    turbo_scale: float = Field(default=1.0, ge=1.0, description="multiplies both scales while turbo is held")

    @property
    def axes(self) -> list[int]:
        return [self.axis_linear, self.axis_angular]


class TeleopArm(StrictModel):
    """Jog one arm at a time (``arm_select`` cycles): end-effector velocity through IK, or joint velocity.

    Cartesian axes are in the arm's base frame: x forward, y left, z up; rotations are about
    the world (base) axes through the end-effector point, as BridgeData deltas. A null axis
    is not driven. With joy_node's convention (stick up and stick left are +1) the defaults
    move the gripper the way the stick points.
    """

    mode: Literal["cartesian", "joint"] = Field(default="cartesian", description="jog mode at start; jog_mode toggles")
    linear_axes: JogAxes = Field(min_length=3, max_length=3, description="joy axes for x, y, z")
    angular_axes: JogAxes = Field(
        default_factory=_no_rotation_axes, min_length=3, max_length=3, description="joy axes for roll, pitch, yaw"
    )
    joint_axes: JogAxes = Field(min_length=1, description="joy axis per arm joint, driver order (joint mode)")
    linear_speed: float = Field(default=0.05, gt=0, description="m/s at full deflection")
    angular_speed: float = Field(default=0.5, gt=0, description="rad/s at full deflection")
    joint_speed: float = Field(default=0.5, gt=0, description="rad/s at full deflection")
    gripper_speed: float = Field(default=1.0, gt=0, description="normalised opening per second while a gripper button is held")
    turbo_scale: float = Field(default=1.0, ge=1.0)

    @property
    def axes(self) -> list[int]:
        return [a for a in (*self.linear_axes, *self.angular_axes, *self.joint_axes) if a is not None]


class LeaderFollow(StrictModel):
    """ALOHA's native teleoperation: while the deadman is held, follower arms track the leader arms.

    Leader joints map one to one onto the follower's (same joint names unless
    ``joint_names`` says otherwise); the leader gripper joint angle is normalised with the
    leader's open/close constants (Interbotix aloha: 0.8298 / -0.0552 rad; original ALOHA
    masters: -0.8 / -1.65 rad) and drives the follower's normalised gripper.
    """

    enabled: bool = False
    topics: dict[str, str] = Field(default_factory=dict, description="arm name -> leader joint_states topic")
    joint_names: list[str] | None = Field(default=None, description="leader joints in follower order; null: the follower's names")
    gripper_joint: str = "gripper"
    gripper_open: float | None = Field(default=None, description="leader gripper joint angle when open (rad)")
    gripper_close: float | None = Field(default=None, description="leader gripper joint angle when closed (rad)")

    @model_validator(mode="after")
    def _gripper_constants(self) -> LeaderFollow:
        if self.enabled and (self.gripper_open is None or self.gripper_close is None):
            raise ValueError("leader_follow needs gripper_open and gripper_close (the leader gripper's joint angles)")
        if self.gripper_open is not None and self.gripper_open == self.gripper_close:
            raise ValueError("leader_follow gripper_open and gripper_close must differ")
        return self


class Teleop(StrictModel):
    joy_topic: str = "/joy"
    joy_timeout_s: float = Field(default=0.5, gt=0, description="Joy silent this long counts as a released deadman")
    axis_deadzone: float = Field(default=0.05, ge=0, lt=1, description="applied on top of the joystick driver's")
    buttons: TeleopButtons
    base: TeleopBase | None = None
    arm: TeleopArm | None = None
    leader_follow: LeaderFollow = Field(default_factory=LeaderFollow)

    @model_validator(mode="after")
    def _consistent(self) -> Teleop:
        jog_buttons = {"gripper_open", "gripper_close", "arm_select", "jog_mode"}
        unused = sorted(k for k in self.buttons.bound() if k in jog_buttons)
        if unused and self.arm is None:
            raise ValueError(f"buttons {unused} need a teleop.arm section (arm jog) to act on")
        users = {"the base": self.base.axes if self.base else [], "the arm jog": self.arm.axes if self.arm else [],
                 "buttons": self.buttons.axes}
        for (first, first_axes), (second, second_axes) in itertools.combinations(users.items(), 2):
            shared = sorted(set(first_axes) & set(second_axes))
            if shared:
                raise ValueError(f"joy axes {shared} are read by both {first} and {second}")
        return self

    @property
    def max_axis(self) -> int:
        """Highest axis index the mapping reads (-1: none)."""
        return max([*(self.base.axes if self.base else []), *(self.arm.axes if self.arm else []), *self.buttons.axes], default=-1)

    @property
    def max_button(self) -> int:
        return self.buttons.max_button
