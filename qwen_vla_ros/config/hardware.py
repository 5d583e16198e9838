"""The robot's parts the runtime talks to: cameras, arms (joints, gripper, kinematics),
the mobile base, and the command adapters that reach their drivers."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from qwen_vla_ros.config.base import MAX_RATE_HZ, Limits, StrictModel, require_rate_limits, require_unique


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
    CameraSourceTopic | CameraSourceRealsense | CameraSourceBag | CameraSourceVideo,
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
    def _distinct(self) -> Gripper:
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
    def _consistent(self) -> Arm:
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
    def _channel_count(self) -> Base:
        expected = 2 if self.mode == "twist" else 3
        if len(self.channels) != expected:
            raise ValueError(f"base mode {self.mode!r} needs {expected} channels, got {len(self.channels)}")
        return self


class StartPose(StrictModel):
    """Where the arms go before the policy gets control (docs/operation.md, "Start pose"): moved there
    within the joints' velocity and acceleration limits, then confirmed from joint states."""

    joints: dict[str, list[float]] = Field(min_length=1, description="arm name -> positions of arms[].joints, rad")
    grippers: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description="arm name -> gripper command sent with the pose (normalised, 0 closed, 1 open); not judged on "
        "arrival, as the gripper may be stopped by what it holds")
    tolerance_rad: float = Field(default=0.05, gt=0, description="largest joint error that counts as arrived")
    timeout_s: float = Field(default=15.0, gt=0, description="not arrived this long after the request: refused")


class HandBack(StrictModel):
    """How the controller lets go of the arms at shutdown (docs/operation.md, "Hand-back"): they hold,
    and commands stop only once every arm channel is at rest."""

    sleep_pose: bool = Field(default=False, description="first move the arms to the driver's joint_sleep_positions")
    rest_velocity: float = Field(default=1e-3, gt=0, description="rad/s under which an arm channel counts as holding")
    timeout_s: float = Field(default=10.0, gt=0, description="longest the hand-back may take before commands stop")


class InterbotixPreflight(StrictModel):
    """What the controller asks each xs_sdk driver before its first command (docs/operation.md,
    "Interbotix preflight"): modes, joint names and their joint-state order, limits."""

    enabled: bool = Field(default=True, description="false only where no xs_sdk driver serves the arms")
    timeout_s: float = Field(default=5.0, gt=0, description="a driver silent this long is a refusal")
    arm_mode: Literal["position"] = Field(
        default="position", description="the arm group's mode: JointGroupCommand carries joint angles in rad")
    gripper_mode: Literal["position", "ext_position", "current_based_position"] = Field(
        default="current_based_position",
        description="the gripper's mode: the adapter sends a motor angle in rad, which only these modes read as one")
    limit_tolerance: float = Field(
        default=1e-6, ge=0, le=1e-3,
        description="rad or rad/s a config limit may pass the driver's by: the driver answers in float32")


class InterbotixConfigure(StrictModel):
    """What ``configure_robot:=true`` writes to each follower's motors before the preflight (as the
    ALOHA stack does at start-up); nothing is written without that option."""

    profile_type: Literal["velocity", "time"] = "velocity"
    profile_velocity: int = Field(default=0, ge=0, description="Profile_Velocity register; 0: no profile limit")
    profile_acceleration: int = Field(default=0, ge=0, description="Profile_Acceleration register; 0: no limit")
    gripper_current_register: str = Field(default="current_limit", min_length=1)
    gripper_current_limit: int = Field(default=300, gt=0, description="the gripper motor's current limit register value")


class InterbotixOutput(StrictModel):
    """interbotix_xs_sdk: JointGroupCommand for the arm group, JointSingleCommand for the gripper."""

    adapter: Literal["interbotix"]
    arms: list[str] = Field(min_length=1)
    group_topic: str = "/{namespace}/commands/joint_group"
    single_topic: str = "/{namespace}/commands/joint_single"
    group_name: str = "arm"
    gripper_name: str = "gripper"
    preflight: InterbotixPreflight = Field(default_factory=InterbotixPreflight)
    configure: InterbotixConfigure = Field(default_factory=InterbotixConfigure)


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
    InterbotixOutput | JointTrajectoryOutput | ForwardCommandOutput | TwistOutput,
    Field(discriminator="adapter"),
]
