"""Typed description of one robot embodiment: the top-level model and what is its own.

Every robot-specific number the runtime uses comes from an embodiment file. Its sections
live in their own modules: :mod:`~qwen_vla_ros.config.spaces` (action and state channels,
normalisation), :mod:`~qwen_vla_ros.config.hardware` (cameras, arms, base, command
adapters), :mod:`~qwen_vla_ros.config.teleop` and :mod:`~qwen_vla_ros.config.sim`, all on
:mod:`~qwen_vla_ros.config.base`. Here are the control timing, the safety settings, the
robot's URDF, and the checks that need more than one section.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qwen_vla_ros.config.base import MAX_RATE_HZ, StrictModel, require_unique
from qwen_vla_ros.config.hardware import Arm, Base, Camera, HandBack, OutputAdapter, StartPose, TwistOutput
from qwen_vla_ros.config.sim import KinematicArmSim, MujocoAlohaSim, SimConfig
from qwen_vla_ros.config.spaces import (
    ActionSpace,
    GripperSource,
    JointSource,
    Normalization,
    OdometrySource,
    StateSpace,
)
from qwen_vla_ros.config.teleop import Teleop

Interpolation = Literal["linear", "cubic_hermite", "minimum_jerk"]


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


class Safety(StrictModel):
    future_stamp_tolerance_s: float = Field(default=0.05, ge=0)
    max_chunk_age_s: float = Field(default=2.0, gt=0, description="chunks stamped older than this are stale")
    joint_state_timeout_s: float = Field(default=0.25, gt=0)
    startup_ramp_s: float = Field(default=1.0, ge=0, description="ramp from measured state after start/takeover/reset")
    max_chunk_actions: int = Field(default=256, gt=0, description="longer chunks are rejected: bounds the work one chunk causes")
    estop_topic: str = "/qwen_vla/estop"
    policy_timeout_s: float = Field(
        default=0.25, gt=0, allow_inf_nan=False,
        description="no policy heartbeat for this long: the policy is lost and the arms brake to a hold",
    )
    action_dt_tolerance_s: float = Field(
        default=0.001, gt=0, allow_inf_nan=False,
        description="a chunk whose action spacing differs from control.action_dt by more is rejected (bad_spacing)",
    )
    max_chunk_duration_s: float = Field(
        default=2.0, gt=0, allow_inf_nan=False,
        description="a chunk spanning longer (first to last action) is rejected: bounds how long one chunk drives",
    )


class Robot(StrictModel):
    """The hardware and its URDF; joint limits are checked against the URDF's (config/urdf.py)."""

    model: str = Field(description="hardware description, e.g. 'aloha (2x ViperX-300s followers)'")
    urdf: str = Field(description="file in urdf/, relative to the package share directory")


class EmbodimentConfig(StrictModel):
    """One robot embodiment. Each section is its own model (its module says what it covers);
    the validators here check what needs two sections at once, one concern each."""

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
    start_pose: StartPose | None = None
    hand_back: HandBack = Field(default_factory=HandBack)

    @model_validator(mode="after")
    def _chunk_bounds_fit_timing(self) -> EmbodimentConfig:
        """The chunk spacing and duration bounds must let the embodiment's own chunks through."""
        timing, safety = self.control, self.safety
        if safety.action_dt_tolerance_s >= timing.action_dt / 2:
            raise ValueError(f"safety.action_dt_tolerance_s ({safety.action_dt_tolerance_s}) must be below half of "
                             f"control.action_dt ({timing.action_dt})")
        span_s = (timing.chunk_length - 1) * timing.action_dt
        if safety.max_chunk_duration_s < span_s:
            raise ValueError(f"safety.max_chunk_duration_s ({safety.max_chunk_duration_s}) is shorter than a chunk of "
                             f"control.chunk_length actions ({span_s:g} s): every chunk would be rejected")
        return self

    @model_validator(mode="after")
    def _unique_part_names(self) -> EmbodimentConfig:
        require_unique([c.name for c in self.cameras], "camera names")
        require_unique([a.name for a in self.arms], "arm names")
        return self

    @model_validator(mode="after")
    def _every_action_channel_driven_once(self) -> EmbodimentConfig:
        """Each action channel has exactly one driver (arm joint, ee_delta, gripper or base), and a
        joint-position channel stays inside the limits of the joint it drives."""
        channels = {c.name: c for c in self.action.channels}
        channel_index = {c.name: k for k, c in enumerate(self.action.channels)}
        drivers: dict[str, str] = {}

        def claim(channel: str, who: str) -> None:
            if channel not in channels:
                raise ValueError(f"{who} names action channel {channel!r}, which is not in action.channels")
            if channel in drivers:
                raise ValueError(f"action channel {channel!r} is driven by both {drivers[channel]} and {who}")
            drivers[channel] = who

        for arm_index, arm in enumerate(self.arms):
            for joint_index, joint in enumerate(arm.joints):
                if joint.channel is not None:
                    claim(joint.channel, f"arm {arm.name!r} joint {joint.name!r}")
                    if not joint.limits.contains(channels[joint.channel].limits):
                        raise ValueError(
                            f"action.channels[{channel_index[joint.channel]}].limits: action channel "
                            f"{joint.channel!r} limits exceed the limits of arm {arm.name!r} joint {joint.name!r} "
                            f"(arms[{arm_index}].joints[{joint_index}].limits)"
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
        return self

    @model_validator(mode="after")
    def _state_sources_exist(self) -> EmbodimentConfig:
        arms = self.arms_by_name
        for channel in self.state.channels:
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
        return self

    @model_validator(mode="after")
    def _normalization_fits_the_spaces(self) -> EmbodimentConfig:
        for part, stats, count in (
            ("action", self.normalization.action, len(self.action.channels)),
            ("state", self.normalization.state, len(self.state.channels)),
        ):
            if len(stats) != count:
                raise ValueError(f"normalization.{part} has {len(stats)} values but there are {count} {part} channels")
        return self

    @model_validator(mode="after")
    def _start_pose_inside_the_arms(self) -> EmbodimentConfig:
        """A start pose names known arms, one value per joint, each inside that joint's limits; grippers only of
        posed arms that have a gripper channel."""
        if self.start_pose is None:
            return self
        arms = self.arms_by_name
        for arm_name, positions in self.start_pose.joints.items():
            if arm_name not in arms:
                raise ValueError(f"start_pose.joints names unknown arm {arm_name!r}")
            joints = arms[arm_name].joints
            if len(positions) != len(joints):
                raise ValueError(f"start_pose.joints.{arm_name} has {len(positions)} values for {len(joints)} joints")
            for joint, value in zip(joints, positions, strict=True):
                if not joint.limits.lower <= value <= joint.limits.upper:
                    raise ValueError(f"start_pose.joints.{arm_name}: {joint.name} = {value} is outside "
                                     f"[{joint.limits.lower}, {joint.limits.upper}]")
        for arm_name in self.start_pose.grippers:
            if arm_name not in self.start_pose.joints:
                raise ValueError(f"start_pose.grippers names arm {arm_name!r}, which start_pose.joints does not pose")
            gripper = arms[arm_name].gripper
            if gripper is None or gripper.channel is None:
                raise ValueError(f"start_pose.grippers names arm {arm_name!r}, which has no gripper channel")
        return self

    @model_validator(mode="after")
    def _outputs_drive_every_part(self) -> EmbodimentConfig:
        arms = self.arms_by_name
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
        return self

    @model_validator(mode="after")
    def _teleop_fits_the_parts(self) -> EmbodimentConfig:
        teleop, arms = self.teleop, self.arms_by_name
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
        return self

    @model_validator(mode="after")
    def _sim_fits_the_parts(self) -> EmbodimentConfig:
        arms = self.arms_by_name
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

    @property
    def arms_by_name(self) -> dict[str, Arm]:
        return {a.name: a for a in self.arms}

    @property
    def commands_are_actions(self) -> bool:
        """Whether the command vector the controller sends is the action vector itself.

        True for joint positions and base velocities. False where an arm takes end-effector
        deltas (its joints are commanded, through IK) or the base takes waypoints (a Twist
        is commanded): real-time chunking, which hands committed commands back to the
        policy as actions, needs this to be True.
        """
        return all(arm.ee_delta is None for arm in self.arms) and (self.base is None or self.base.mode == "twist")

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"embodiment {self.name!r} has no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def require_base(self, needed_by: str) -> Base:
        """The base section, where ``needed_by`` found that the embodiment drives or reads one; a
        KeyError naming both rather than an AttributeError on None when that finding was wrong."""
        if self.base is None:
            raise KeyError(f"{needed_by} needs a base, but embodiment {self.name!r} has none")
        return self.base
