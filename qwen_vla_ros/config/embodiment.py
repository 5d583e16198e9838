"""Typed description of one robot embodiment.

Every robot-specific number the runtime uses comes from here: action channels and their
limits, the mask into the model's padded action space, normalisation statistics, timing,
cameras, joint-state topics, the command adapters, teleop mapping and safety settings.
Models forbid unknown keys so a typo in YAML fails loudly instead of silently using a
default.
"""
from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

ChannelUnit = Literal["rad", "m", "normalized", "m/s", "rad/s"]
Interpolation = Literal["linear", "cubic_hermite", "minimum_jerk"]


MAX_RATE_HZ = 10_000.0
"""Highest rate any config may ask for (servo, camera, replanning, heartbeat): a value above it
is a typo (a period written as a rate) and would starve the host, so it is refused."""


class StrictModel(BaseModel):
    """Base for all config models: unknown keys are errors, values are validated on assignment.

    No float anywhere may be ``.inf`` or ``.nan``: an infinite limit, rate, timeout or
    tolerance switches its check off without saying so, and NaN compares false both ways.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def require_unique(names: list[str], what: str) -> list[str]:
    """Raise naming the duplicates, for validators of name lists."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique, duplicated: {duplicates}")
    return names


class Limits(StrictModel):
    """Bounds on a value and its first two time derivatives.

    For a joint these are position (rad or m), velocity and acceleration. For a channel that
    is itself a velocity (a base's v or omega) ``lower``/``upper`` bound the velocity,
    ``velocity`` bounds its rate of change (acceleration) and ``acceleration`` its jerk.
    A derivative bound left empty is not enforced in that space. Only action channels whose
    values are not commanded as they are may leave them empty (end-effector deltas: their
    rates are enforced after IK, on the arm's joints); joint-space command channels (a
    driver joint, a gripper motor) must set both, see :func:`require_rate_limits`.
    """

    lower: float
    upper: float
    velocity: float | None = Field(default=None, gt=0)
    acceleration: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Limits":
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"lower ({self.lower}) and upper ({self.upper}) must be finite")
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self

    def contains(self, other: "Limits") -> bool:
        """True when ``other`` lies within these bounds in position, velocity and acceleration."""
        inside = self.lower <= other.lower and other.upper <= self.upper
        for mine, theirs in ((self.velocity, other.velocity), (self.acceleration, other.acceleration)):
            if mine is not None and (theirs is None or theirs > mine):
                inside = False
        return inside


def require_rate_limits(limits: Limits) -> Limits:
    """A joint-space command channel without a velocity or acceleration bound would be sent
    steps of any size: the controller's rate limiter has nothing to enforce."""
    missing = [name for name in ("velocity", "acceleration") if getattr(limits, name) is None]
    if missing:
        raise ValueError(
            f"a joint-space command channel needs finite {' and '.join(missing)} limits "
            "(only end-effector delta action channels may leave them empty)"
        )
    return limits


class ActionChannel(StrictModel):
    name: str = Field(min_length=1)
    unit: ChannelUnit
    limits: Limits


class ActionSpace(StrictModel):
    """The embodiment's ordered action channels and where they sit in the padded model space."""

    channels: list[ActionChannel] = Field(min_length=1)
    padded_dim: int = Field(default=32, gt=0)
    mask: list[int] = Field(description="index in the padded action vector of each channel, in channel order")

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[ActionChannel]) -> list[ActionChannel]:
        require_unique([c.name for c in channels], "action channel names")
        return channels

    @field_validator("mask")
    @classmethod
    def _mask_matches(cls, mask: list[int], info: ValidationInfo) -> list[int]:
        return _validate_mask(mask, info, "action channels")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]


class JointSource(StrictModel):
    kind: Literal["joint"] = "joint"
    arm: str
    joint: str


class GripperSource(StrictModel):
    """Gripper opening normalised 0 (closed) .. 1 (open) from the arm's gripper constants."""

    kind: Literal["gripper"] = "gripper"
    arm: str


class EndEffectorSource(StrictModel):
    """A component of the end-effector pose from forward kinematics of the arm's joint state."""

    kind: Literal["ee_pose"] = "ee_pose"
    arm: str
    component: Literal["x", "y", "z", "roll", "pitch", "yaw"]


class OdometrySource(StrictModel):
    kind: Literal["odom"] = "odom"
    field: Literal["linear_x", "angular_z"]


StateSource = Annotated[
    Union[JointSource, GripperSource, EndEffectorSource, OdometrySource], Field(discriminator="kind")
]


class StateChannel(StrictModel):
    name: str = Field(min_length=1)
    unit: ChannelUnit
    source: StateSource


class StateSpace(StrictModel):
    """Proprioceptive state fed to the model, built from joint states and odometry."""

    channels: list[StateChannel] = Field(min_length=1)
    padded_dim: int = Field(default=32, gt=0)
    mask: list[int]

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[StateChannel]) -> list[StateChannel]:
        require_unique([c.name for c in channels], "state channel names")
        return channels

    @field_validator("mask")
    @classmethod
    def _mask_matches(cls, mask: list[int], info: ValidationInfo) -> list[int]:
        return _validate_mask(mask, info, "state channels")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]


def _validate_mask(mask: list[int], info: ValidationInfo, what: str) -> list[int]:
    channels = info.data.get("channels")
    padded_dim = info.data.get("padded_dim")
    if channels is not None and len(mask) != len(channels):
        raise ValueError(f"mask has {len(mask)} entries but there are {len(channels)} {what}")
    if padded_dim is not None:
        outside = [i for i in mask if not 0 <= i < padded_dim]
        if outside:
            raise ValueError(f"mask indices {outside} lie outside the padded space [0, {padded_dim})")
    require_unique([str(i) for i in mask], "mask indices")
    return mask


class MeanStd(StrictModel):
    mean: list[float]
    std: list[float]

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float]) -> list[float]:
        bad = [s for s in std if not s > 0]
        if bad:
            raise ValueError(f"std must be > 0, got {bad}")
        return std

    @model_validator(mode="after")
    def _same_length(self) -> "MeanStd":
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self

    def __len__(self) -> int:
        return len(self.mean)


class Quantiles(StrictModel):
    """Maps q01..q99 to -1..1, the convention of pi0/OpenVLA-style normalisation."""

    q01: list[float]
    q99: list[float]

    @model_validator(mode="after")
    def _ordered(self) -> "Quantiles":
        if len(self.q01) != len(self.q99):
            raise ValueError(f"q01 has {len(self.q01)} values but q99 has {len(self.q99)}")
        bad = [i for i, (lo, hi) in enumerate(zip(self.q01, self.q99)) if not lo < hi]
        if bad:
            raise ValueError(f"q01 must be below q99, violated at indices {bad}")
        return self

    def __len__(self) -> int:
        return len(self.q01)


class Normalization(StrictModel):
    mode: Literal["mean_std", "quantile"]
    action: MeanStd | Quantiles
    state: MeanStd | Quantiles

    @model_validator(mode="after")
    def _stats_match_mode(self) -> "Normalization":
        expected = MeanStd if self.mode == "mean_std" else Quantiles
        for part in ("action", "state"):
            if not isinstance(getattr(self, part), expected):
                keys = "mean/std" if expected is MeanStd else "q01/q99"
                raise ValueError(f"mode {self.mode!r} needs {keys} statistics for {part}")
        return self


class ControlTiming(StrictModel):
    """Servo rate of the controller and the time grid of the policy's action chunks."""

    rate_hz: float = Field(gt=0, le=MAX_RATE_HZ, description="controller servo rate")
    action_dt: float = Field(ge=1 / MAX_RATE_HZ, description="seconds between consecutive actions in a chunk")
    chunk_length: int = Field(gt=0, description="actions per chunk the embodiment expects")
    interpolation: Interpolation = "cubic_hermite"
    committed_steps: int = Field(
        default=10, ge=0, description="control periods published on /qwen_vla/controller/committed"
    )
    realtime_priority: int = Field(
        default=0, ge=0, le=99,
        description="SCHED_FIFO priority of the controller's loop thread (needs CAP_SYS_NICE or an rtprio limit); 0: normal",
    )

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


class CameraSourceTopic(StrictModel):
    """Frames come from a ROS camera driver; camera_node is not needed.

    ``driver: realsense2_camera`` has the launch files (and ``up``, where the driver is
    installed) start one ``realsense2_camera_node`` per camera, as the Interbotix ALOHA
    bringup does; ``none`` when something else (the rig's own bringup) already runs it.
    """

    type: Literal["topic"] = "topic"
    driver: Literal["realsense2_camera", "none"] = "realsense2_camera"
    serial: str = Field(default="", description="the camera's serial number; empty: the first one found")


class CameraSourceRealsense(StrictModel):
    type: Literal["realsense"] = "realsense"
    serial: str = ""


class CameraSourceBag(StrictModel):
    type: Literal["bag"] = "bag"
    path: str


class CameraSourceVideo(StrictModel):
    type: Literal["video"] = "video"
    path: str = Field(description="video file, capture device, or folder of images")


CameraSource = Annotated[
    Union[CameraSourceTopic, CameraSourceRealsense, CameraSourceBag, CameraSourceVideo],
    Field(discriminator="type"),
]


class Camera(StrictModel):
    name: str = Field(min_length=1)
    topic: str = Field(pattern=r"^/")
    info_topic: str | None = Field(default=None, pattern=r"^/")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    encoding: Literal["rgb8", "bgr8"] = "rgb8"
    fps: float = Field(default=30.0, gt=0, le=MAX_RATE_HZ)
    source: CameraSource = Field(default_factory=CameraSourceTopic)


class ArmJoint(StrictModel):
    """A driver joint, with the physical limits the final command must respect.

    ``channel`` names the action channel that drives this joint directly (joint-position
    embodiments). End-effector-delta embodiments leave it empty: IK drives the joint.
    """

    name: str
    channel: str | None = None
    limits: Limits

    @field_validator("limits")
    @classmethod
    def _rate_limited(cls, limits: Limits) -> Limits:
        return require_rate_limits(limits)


class Gripper(StrictModel):
    """Constants that map the normalised 0 (closed) .. 1 (open) gripper to the driver's units."""

    joint: str = "gripper"
    channel: str | None = None
    joint_open: float
    joint_close: float
    finger_joint: str
    finger_open: float
    finger_close: float
    state_from: Literal["finger", "joint"] = "finger"
    limits: Limits = Field(description="limits of the gripper motor joint, radians")

    @field_validator("limits")
    @classmethod
    def _rate_limited(cls, limits: Limits) -> Limits:
        return require_rate_limits(limits)

    @model_validator(mode="after")
    def _distinct(self) -> "Gripper":
        if self.joint_open == self.joint_close:
            raise ValueError("joint_open and joint_close must differ")
        if self.finger_open == self.finger_close:
            raise ValueError("finger_open and finger_close must differ")
        return self


class ProductOfExponentials(StrictModel):
    """Space-frame PoE kinematics: home pose M and one screw axis (w, v) per arm joint."""

    home: list[list[float]] = Field(min_length=4, max_length=4)
    screw_axes: list[list[float]]

    @field_validator("home")
    @classmethod
    def _homogeneous(cls, home: list[list[float]]) -> list[list[float]]:
        if any(len(row) != 4 for row in home) or home[3] != [0.0, 0.0, 0.0, 1.0]:
            raise ValueError("home must be a 4x4 homogeneous transform with last row [0, 0, 0, 1]")
        return home

    @field_validator("screw_axes")
    @classmethod
    def _six_vectors(cls, axes: list[list[float]]) -> list[list[float]]:
        bad = [i for i, axis in enumerate(axes) if len(axis) != 6]
        if bad:
            raise ValueError(f"screw axes must have 6 components (w, v), wrong at {bad}")
        return axes


class EndEffectorDelta(StrictModel):
    """BridgeData convention: [dx, dy, dz, droll, dpitch, dyaw] in the base frame, rotation
    applied about the end-effector position in world axes."""

    channels: list[str] = Field(min_length=6, max_length=6)
    ik_damping: float = Field(default=0.05, gt=0)
    ik_max_iterations: int = Field(default=100, gt=0)
    ik_position_tolerance_m: float = Field(default=1e-4, gt=0)
    ik_rotation_tolerance_rad: float = Field(default=1e-3, gt=0)


class Arm(StrictModel):
    name: str
    namespace: str = Field(description="driver namespace, e.g. follower_left (older rigs: puppet_left)")
    joint_state_topic: str = Field(pattern=r"^/")
    joints: list[ArmJoint] = Field(min_length=1)
    gripper: Gripper | None = None
    kinematics: ProductOfExponentials
    ee_delta: EndEffectorDelta | None = None
    urdf_prefix: str = Field(default="", description="prefix of this arm's joint names in the URDF")

    @model_validator(mode="after")
    def _consistent(self) -> "Arm":
        require_unique([j.name for j in self.joints], f"arm {self.name!r} joint names")
        if len(self.kinematics.screw_axes) != len(self.joints):
            raise ValueError(
                f"arm {self.name!r} has {len(self.joints)} joints but "
                f"{len(self.kinematics.screw_axes)} screw axes"
            )
        direct = [j.name for j in self.joints if j.channel is not None]
        if self.ee_delta is not None and direct:
            raise ValueError(f"arm {self.name!r} uses ee_delta, so joints {direct} must not name channels")
        if self.ee_delta is None and len(direct) != len(self.joints):
            missing = [j.name for j in self.joints if j.channel is None]
            raise ValueError(f"arm {self.name!r} joints {missing} name no action channel and there is no ee_delta")
        return self

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]


class PathTracker(StrictModel):
    """Pure-pursuit-style follower that turns (x, y, yaw) waypoints into Twist."""

    lookahead_s: float = Field(default=0.5, gt=0)
    heading_gain: float = Field(default=1.5, gt=0)
    goal_tolerance_m: float = Field(default=0.05, gt=0)


class Base(StrictModel):
    mode: Literal["twist", "waypoints"]
    channels: list[str] = Field(description="(v, omega) for twist, (x, y, yaw) for waypoints")
    odom_topic: str = Field(pattern=r"^/")
    max_linear: float = Field(gt=0, description="m/s")
    max_angular: float = Field(gt=0, description="rad/s")
    linear_acceleration: float = Field(gt=0, description="m/s^2")
    angular_acceleration: float = Field(gt=0, description="rad/s^2")
    tracker: PathTracker = Field(default_factory=PathTracker)

    @model_validator(mode="after")
    def _channel_count(self) -> "Base":
        expected = 2 if self.mode == "twist" else 3
        if len(self.channels) != expected:
            raise ValueError(f"base mode {self.mode!r} needs {expected} channels, got {len(self.channels)}")
        return self


class InterbotixOutput(StrictModel):
    """interbotix_xs_sdk: JointGroupCommand for the arm group, JointSingleCommand for the gripper."""

    adapter: Literal["interbotix"]
    arms: list[str] = Field(min_length=1)
    group_topic: str = "/{namespace}/commands/joint_group"
    single_topic: str = "/{namespace}/commands/joint_single"
    group_name: str = "arm"
    gripper_name: str = "gripper"


class JointTrajectoryOutput(StrictModel):
    """Single-point JointTrajectory for a ros2_control JointTrajectoryController."""

    adapter: Literal["joint_trajectory"]
    arms: list[str] = Field(min_length=1)
    topic: str = "/{namespace}/arm_controller/joint_trajectory"


class ForwardCommandOutput(StrictModel):
    """std_msgs/Float64MultiArray for a ros2_control forward command controller."""

    adapter: Literal["forward_command"]
    arms: list[str] = Field(min_length=1)
    topic: str = "/{namespace}/forward_position_controller/commands"


class TwistOutput(StrictModel):
    adapter: Literal["twist"]
    topic: str = Field(pattern=r"^/")


OutputAdapter = Annotated[
    Union[InterbotixOutput, JointTrajectoryOutput, ForwardCommandOutput, TwistOutput],
    Field(discriminator="adapter"),
]


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
    def _sided(self) -> "AxisButton":
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
    def _distinct(self) -> "TeleopButtons":
        def control(binding: int | AxisButton) -> str:  # two axis buttons may share an axis on opposite sides
            return f"button {binding}" if isinstance(binding, int) else f"axis {binding.axis}{'+' if binding.threshold > 0 else '-'}"

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
        default_factory=lambda: [None, None, None], min_length=3, max_length=3, description="joy axes for roll, pitch, yaw"
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
    def _gripper_constants(self) -> "LeaderFollow":
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
    def _consistent(self) -> "Teleop":
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


class Safety(StrictModel):
    future_stamp_tolerance_s: float = Field(default=0.05, ge=0)
    max_chunk_age_s: float = Field(default=2.0, gt=0, description="chunks stamped older than this are stale")
    joint_state_timeout_s: float = Field(default=0.25, gt=0)
    startup_ramp_s: float = Field(default=1.0, ge=0, description="ramp from measured state after start/takeover/reset")
    max_chunk_actions: int = Field(default=256, gt=0, description="longer chunks are rejected: bounds the work one chunk causes")
    estop_topic: str = "/qwen_vla/estop"


class Interval(StrictModel):
    """A closed range ``[lower, upper]`` to sample uniformly from; equal ends fix the value."""

    lower: float
    upper: float

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: object) -> object:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"an interval is [lower, upper], got {len(value)} values")
            return {"lower": value[0], "upper": value[1]}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Interval":
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"interval ends must be finite, got [{self.lower}, {self.upper}]")
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not exceed upper ({self.upper})")
        return self


class SimCommon(StrictModel):
    """Settings every simulator shares: camera rendering, and the base when the embodiment has one."""

    camera_rate_hz: float = Field(default=10.0, ge=0, le=MAX_RATE_HZ, description="0 renders no cameras")
    render_width: int = Field(default=320, gt=0)
    render_height: int = Field(default=240, gt=0)
    cmd_vel_timeout_s: float = Field(
        default=0.3, gt=0, description="the simulated base stops this long after the last Twist (SLATE: 300 ms)"
    )
    odom_frame: str = "odom"
    base_frame: str = "base_link"


class AlohaRandomization(StrictModel):
    """Out-of-distribution factors drawn at every reset; an unset factor keeps the MJCF's value.

    The object ranges default to gym-aloha's ``sample_box_pose`` (world frame, metres).
    """

    object_x: Interval = Field(default_factory=lambda: Interval(lower=0.0, upper=0.2))
    object_y: Interval = Field(default_factory=lambda: Interval(lower=0.4, upper=0.6))
    object_yaw: Interval = Field(default_factory=lambda: Interval(lower=0.0, upper=0.0), description="rad")
    light_scale: Interval | None = Field(default=None, description="multiplies every light's diffuse and the headlight")
    table_rgb: list[Interval] | None = Field(default=None, min_length=3, max_length=3, description="per channel, 0..1")

    @field_validator("table_rgb")
    @classmethod
    def _unit_colours(cls, channels: list[Interval] | None) -> list[Interval] | None:
        if channels is not None and any(c.lower < 0 or c.upper > 1 for c in channels):
            raise ValueError("table_rgb channels must lie in [0, 1]")
        return channels


class MujocoAlohaSim(SimCommon):
    """ALOHA in MuJoCo from gym-aloha's MJCF, driven through the ``mujoco`` API directly."""

    type: Literal["mujoco_aloha"]
    task: Literal["transfer_cube"] = "transfer_cube"
    mjcf: str = Field(
        default="bimanual_viperx_transfer_cube.xml", description="file in gym_aloha/assets, or an absolute path"
    )
    mjcf_arms: dict[str, str] = Field(
        default_factory=lambda: {"left": "vx300s_left", "right": "vx300s_right"},
        description="config arm name -> MJCF body/joint name prefix",
    )
    camera_map: dict[str, str] = Field(description="config camera name -> MJCF camera name")
    shadows: bool = Field(default=False, description="shadow maps cost ~4x render time on llvmpipe")
    multisample: int = Field(default=0, ge=0, description="offscreen MSAA samples (the MJCF asks for 4)")
    success: Literal["lifted", "transferred"] = Field(
        default="lifted",
        description="lifted: the right gripper holds the cube off the table (gym-aloha reward 2); "
        "transferred: the left gripper does (reward 4, gym-aloha's is_success)",
    )
    randomization: AlohaRandomization = Field(default_factory=AlohaRandomization)


class KinematicArmSim(SimCommon):
    """Mock hardware: joints follow commands within the config's velocity and acceleration limits."""

    type: Literal["kinematic_arm"]
    initial_joints: dict[str, list[float]] = Field(default_factory=dict, description="arm name -> joint positions")
    initial_gripper: float = Field(default=1.0, ge=0, le=1, description="normalised, 1 = open")


class KinematicBaseSim(SimCommon):
    type: Literal["kinematic_base"]


SimConfig = Annotated[Union[MujocoAlohaSim, KinematicArmSim, KinematicBaseSim], Field(discriminator="type")]


class Robot(StrictModel):
    model: str = Field(description="hardware description, e.g. 'aloha (2x ViperX-300s followers)'")
    urdf: str = Field(description="file in urdf/, relative to the package share directory")


class EmbodimentConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    robot: Robot
    prompt: str = Field(min_length=1, description="embodiment and control-convention text fed to the model")
    action: ActionSpace
    state: StateSpace
    normalization: Normalization
    control: ControlTiming
    cameras: list[Camera] = Field(default_factory=list)
    arms: list[Arm] = Field(default_factory=list)
    base: Base | None = None
    outputs: list[OutputAdapter] = Field(min_length=1)
    teleop: Teleop
    safety: Safety = Field(default_factory=Safety)
    sim: SimConfig | None = None

    @model_validator(mode="after")
    def _cross_references(self) -> "EmbodimentConfig":
        """Checks that need the whole file: every channel is driven once, names resolve, sizes agree."""
        require_unique([c.name for c in self.cameras], "camera names")
        require_unique([a.name for a in self.arms], "arm names")
        arms = {a.name: a for a in self.arms}
        channels = {c.name: c for c in self.action.channels}

        drivers: dict[str, str] = {}

        def claim(channel: str, who: str) -> None:
            if channel not in channels:
                raise ValueError(f"{who} names action channel {channel!r}, which is not in action.channels")
            if channel in drivers:
                raise ValueError(f"action channel {channel!r} is driven by both {drivers[channel]} and {who}")
            drivers[channel] = who

        for arm in self.arms:
            for joint in arm.joints:
                if joint.channel is not None:
                    claim(joint.channel, f"arm {arm.name!r} joint {joint.name!r}")
                    if not joint.limits.contains(channels[joint.channel].limits):
                        raise ValueError(
                            f"action channel {joint.channel!r} limits exceed the limits of "
                            f"arm {arm.name!r} joint {joint.name!r}"
                        )
            if arm.ee_delta is not None:
                for name in arm.ee_delta.channels:
                    claim(name, f"arm {arm.name!r} ee_delta")
            if arm.gripper is not None and arm.gripper.channel is not None:
                claim(arm.gripper.channel, f"arm {arm.name!r} gripper")
        if self.base is not None:
            for name in self.base.channels:
                claim(name, "base")
        undriven = [n for n in channels if n not in drivers]
        if undriven:
            raise ValueError(f"action channels {undriven} are driven by no arm, gripper or base")

        for index, channel in enumerate(self.state.channels):
            source = channel.source
            if isinstance(source, OdometrySource):
                if self.base is None:
                    raise ValueError(f"state channel {channel.name!r} reads odometry but there is no base")
                continue
            arm = arms.get(source.arm)
            if arm is None:
                raise ValueError(f"state channel {channel.name!r} reads unknown arm {source.arm!r}")
            if isinstance(source, JointSource) and source.joint not in arm.joint_names:
                raise ValueError(f"state channel {channel.name!r} reads unknown joint {source.joint!r}")
            if isinstance(source, GripperSource) and arm.gripper is None:
                raise ValueError(f"state channel {channel.name!r} reads a gripper but arm {arm.name!r} has none")

        for part, stats, count in (
            ("action", self.normalization.action, len(self.action.channels)),
            ("state", self.normalization.state, len(self.state.channels)),
        ):
            if len(stats) != count:
                raise ValueError(f"normalization.{part} has {len(stats)} values but there are {count} {part} channels")

        for output in self.outputs:
            for arm_name in getattr(output, "arms", []):
                if arm_name not in arms:
                    raise ValueError(f"output adapter {output.adapter!r} names unknown arm {arm_name!r}")
            if isinstance(output, TwistOutput) and self.base is None:
                raise ValueError("output adapter 'twist' needs a base section")
        driven_arms = {a for o in self.outputs for a in getattr(o, "arms", [])}
        if set(arms) - driven_arms:
            raise ValueError(f"arms {sorted(set(arms) - driven_arms)} have no output adapter")
        if self.base is not None and not any(isinstance(o, TwistOutput) for o in self.outputs):
            raise ValueError("the base has no 'twist' output adapter")

        self._check_teleop(arms)
        if isinstance(self.sim, MujocoAlohaSim):
            unknown = sorted(set(self.sim.camera_map) - {c.name for c in self.cameras})
            if unknown:
                raise ValueError(f"sim.camera_map names unknown cameras {unknown}")
            if set(self.sim.mjcf_arms) != set(arms):
                raise ValueError(
                    f"sim.mjcf_arms must map exactly the arms {sorted(arms)}, got {sorted(self.sim.mjcf_arms)}"
                )
        if isinstance(self.sim, KinematicArmSim):
            for arm_name, joints in self.sim.initial_joints.items():
                if arm_name not in arms:
                    raise ValueError(f"sim.initial_joints names unknown arm {arm_name!r}")
                if len(joints) != len(arms[arm_name].joints):
                    raise ValueError(
                        f"sim.initial_joints[{arm_name!r}] has {len(joints)} values but the arm has "
                        f"{len(arms[arm_name].joints)} joints"
                    )
        return self

    def _check_teleop(self, arms: dict[str, Arm]) -> None:
        teleop = self.teleop
        if teleop.base is not None and self.base is None:
            raise ValueError("teleop.base is set but the embodiment has no base")
        if teleop.arm is not None:
            if not arms:
                raise ValueError("teleop.arm is set but the embodiment has no arms")
            wrong = {a.name: len(a.joints) for a in arms.values() if len(a.joints) != len(teleop.arm.joint_axes)}
            if wrong:
                raise ValueError(f"teleop.arm.joint_axes has {len(teleop.arm.joint_axes)} entries but arms have joints {wrong}")
        leader = teleop.leader_follow
        if leader.enabled:
            unknown = sorted(set(leader.topics) - set(arms))
            if unknown:
                raise ValueError(f"teleop.leader_follow names unknown arms {unknown}")
            if not leader.topics:
                raise ValueError("teleop.leader_follow is enabled but names no leader topics")
            for name in leader.topics:
                if leader.joint_names is not None and len(leader.joint_names) != len(arms[name].joints):
                    raise ValueError(
                        f"teleop.leader_follow.joint_names has {len(leader.joint_names)} names but arm {name!r} "
                        f"has {len(arms[name].joints)} joints"
                    )

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"embodiment {self.name!r} has no arm {name!r}; arms: {[a.name for a in self.arms]}")
