"""The operator as a command source: joystick jog, base Twist, grippers and leader-arm following.

Every period the target is built from the command sent last period, so taking over never
jumps and a jog that the rate limits slow down never winds up:

- **base**: ``(v, omega) = scale * axis`` (times ``turbo_scale`` while turbo is held), as
  teleop_twist_joy; the controller's acceleration limits shape it;
- **arm jog** (the selected arm; ``arm_select`` cycles): Cartesian, the end effector moves
  by ``velocity * dt`` over the step's duration (translation in the base frame, rotation about world axes through
  the end-effector point) and the damped least-squares IK, seeded by the command, gives the
  joints; a step the IK cannot reach is not taken (the arm stops at the edge of its
  workspace, counted in ``ik_unreachable``). Joint mode moves each joint by
  ``axis * joint_speed * dt``;
- **gripper**: while ``gripper_open``/``gripper_close`` is held the selected arm's opening
  moves at ``gripper_speed`` per second;
- **leader arms** (ALOHA, ``leader_follow.enabled``): the arm's target is the leader's
  joints and normalised gripper; it is faded in from the command over
  ``safety.startup_ramp_s`` (minimum jerk) whenever following starts, at a takeover or when
  a leader stream that went stale comes back. An arm whose leader is stale holds.

Channels nothing drives hold the command. The Joy the source reads is the arbiter's last
one (still valid until it expires, as in twist_mux).

The command vector's layout comes in through the small protocols below, which
:class:`qwen_vla_ros.control.layout.CommandLayout` satisfies: the controller composes
teleop, so teleop must not import control back.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import modern_robotics as mr
import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import Arm
from qwen_vla_ros.config.teleop import LeaderFollow, TeleopArm
from qwen_vla_ros.embodiments.gripper import unlerp
from qwen_vla_ros.embodiments.ik import ArmIK, apply_ee_delta
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.teleop.mapping import Joy

JogMode = Literal["cartesian", "joint"]
# A jog step is a few millimetres from the last command, which Gauss-Newton closes in one or two
# iterations; needing more means the step leaves the workspace, and every iteration costs control time.
JOG_IK_ITERATIONS = 4


class ArmChannels(Protocol):
    """Where one arm's joints and gripper sit in the command vector."""

    @property
    def arm(self) -> Arm: ...
    @property
    def name(self) -> str: ...
    @property
    def joint_index(self) -> np.ndarray: ...
    @property
    def gripper_index(self) -> int | None: ...


class BaseChannels(Protocol):
    @property
    def command_index(self) -> np.ndarray: ...  # (v, omega)


class CommandChannels(Protocol):
    @property
    def arms(self) -> Sequence[ArmChannels]: ...
    @property
    def base(self) -> BaseChannels | None: ...


@dataclass(frozen=True)
class LeaderSample:
    joints: np.ndarray
    gripper: float | None  # normalised opening
    received_ns: int


class LeaderArms:
    """Latest leader joint states per follower arm, converted to the follower's command units."""

    def __init__(self, settings: LeaderFollow, layout: CommandChannels, timeout_s: float):
        self.settings = settings
        self.timeout_ns = round(timeout_s * NS_PER_S)
        self.arms = {arm.name: arm for arm in layout.arms if settings.enabled and arm.name in settings.topics}
        self.samples: dict[str, LeaderSample] = {}

    def update(self, arm: str, names: Sequence[str], positions: Sequence[float], now_ns: int) -> None:
        """MalformedMessageError for missing joints or non-finite values; KeyError for an arm with no
        leader configured (the node subscribes only to configured leaders: a programming error)."""
        if arm not in self.arms:
            raise KeyError(f"no leader is configured for arm {arm!r}; leaders: {sorted(self.arms)}")
        layout = self.arms[arm]
        values: Mapping[str, float] = dict(zip(names, positions, strict=False))
        joint_names = self.settings.joint_names or layout.arm.joint_names
        missing = [name for name in joint_names if name not in values]
        gripper = None
        if layout.gripper_index is not None:
            if self.settings.gripper_joint not in values:
                missing.append(self.settings.gripper_joint)
            else:
                close, open_ = self.settings.gripper_close, self.settings.gripper_open
                assert close is not None and open_ is not None  # validated with the config
                gripper = float(np.clip(unlerp(close, open_, values[self.settings.gripper_joint]), 0.0, 1.0))
        if missing:
            raise MalformedMessageError(f"leader joint state for arm {arm!r} lacks joints {missing}")
        joints = np.array([values[name] for name in joint_names], dtype=float)
        if not np.all(np.isfinite(joints)) or (gripper is not None and not np.isfinite(gripper)):
            raise MalformedMessageError(f"leader joint state for arm {arm!r} has non-finite positions")
        self.samples[arm] = LeaderSample(joints, gripper, now_ns)

    def fresh(self, arm: str, now_ns: int) -> LeaderSample | None:
        sample = self.samples.get(arm)
        return sample if sample is not None and now_ns - sample.received_ns <= self.timeout_ns else None


class TeleopSource:
    name = "teleop"

    def __init__(self, config: EmbodimentConfig, layout: CommandChannels):
        self.config = config
        self.layout = layout
        self.settings = config.teleop
        self.ramp_ns = round(config.safety.startup_ramp_s * NS_PER_S)
        self.leaders = LeaderArms(config.teleop.leader_follow, layout, config.safety.joint_state_timeout_s)
        jogged = [arm for arm in layout.arms if arm.name not in self.leaders.arms]
        self.jog: TeleopArm | None = config.teleop.arm if jogged else None
        self.jog_arms: tuple[ArmChannels, ...] = tuple(jogged) if self.jog else ()
        self.iks = {arm.name: self._jog_ik(arm) for arm in self.jog_arms}
        self.selected = 0
        self.mode: JogMode = self.jog.mode if self.jog else "cartesian"
        self.joy: Joy | None = None
        self.ik_unreachable = 0
        self._following: dict[str, tuple[int, np.ndarray]] = {}  # arm -> (start_ns, command at start)
        self._target: np.ndarray | None = None

    @staticmethod
    def _jog_ik(arm: ArmChannels) -> ArmIK:
        ik = ArmIK.from_config(arm.arm)
        ik.settings = ik.settings.model_copy(update={"ik_max_iterations": JOG_IK_ITERATIONS})
        return ik

    # -- operator controls ----------------------------------------------------------------
    @property
    def selected_arm(self) -> str | None:
        return self.jog_arms[self.selected].name if self.jog_arms else None

    def next_arm(self) -> str | None:
        if self.jog_arms:
            self.selected = (self.selected + 1) % len(self.jog_arms)
        return self.selected_arm

    def toggle_mode(self) -> JogMode:
        self.mode = "joint" if self.mode == "cartesian" else "cartesian"
        return self.mode

    def engage(self) -> None:
        """A takeover: leader-followed arms fade in again from wherever the command is."""
        self._following.clear()
        self._target = None

    # -- command source -------------------------------------------------------------------
    def tick(self, now_ns: int, command: np.ndarray, dt_s: float) -> None:
        target = np.array(command, dtype=float, copy=True)
        joy = self.joy
        if joy is not None:
            self._drive_base(target, joy)
            if self.jog_arms and self.jog is not None:
                self._jog(target, self.jog_arms[self.selected], self.jog, joy, dt_s)
        for arm in self.leaders.arms.values():
            self._follow(target, arm, now_ns)
        self._target = target

    def target(self, now_ns: int, feedback: object) -> np.ndarray | None:
        return self._target

    # -- parts ------------------------------------------------------------------------------
    def _turbo(self, joy: Joy, scale: float) -> float:
        return scale if joy.pressed(self.settings.buttons.turbo) else 1.0

    def _drive_base(self, target: np.ndarray, joy: Joy) -> None:
        mapping, base = self.settings.base, self.layout.base
        if mapping is None or base is None:
            return
        turbo = self._turbo(joy, mapping.turbo_scale)
        target[base.command_index] = (
            turbo * mapping.scale_linear * joy.axis(mapping.axis_linear),
            turbo * mapping.scale_angular * joy.axis(mapping.axis_angular),
        )

    def _jog(self, target: np.ndarray, arm: ArmChannels, jog: TeleopArm, joy: Joy, dt_s: float) -> None:
        step = dt_s * self._turbo(joy, jog.turbo_scale)
        joints = target[arm.joint_index]
        if self.mode == "joint":
            target[arm.joint_index] = joints + step * jog.joint_speed * np.array([joy.axis(a) for a in jog.joint_axes])
        else:
            linear = jog.linear_speed * np.array([joy.axis(a) for a in jog.linear_axes])
            angular = jog.angular_speed * np.array([joy.axis(a) for a in jog.angular_axes])
            if np.any(linear) or np.any(angular):
                ik = self.iks[arm.name]
                goal = apply_ee_delta(ik.kinematics.forward(joints), step * np.concatenate([linear, angular]))
                result = ik.solve(goal, joints, min_iterations=1)
                if result.converged:
                    target[arm.joint_index] = result.joints
                else:
                    self.ik_unreachable += 1
        if arm.gripper_index is not None:
            buttons = self.settings.buttons
            direction = float(joy.pressed(buttons.gripper_open)) - float(joy.pressed(buttons.gripper_close))
            target[arm.gripper_index] += direction * jog.gripper_speed * step

    def _follow(self, target: np.ndarray, arm: ArmChannels, now_ns: int) -> None:
        channels = arm.joint_index if arm.gripper_index is None else np.r_[arm.joint_index, arm.gripper_index]
        sample = self.leaders.fresh(arm.name, now_ns)
        if sample is None:
            self._following.pop(arm.name, None)  # hold; fade in again when the leader comes back
            return
        leader = sample.joints if sample.gripper is None else np.r_[sample.joints, sample.gripper]
        if arm.name not in self._following:
            self._following[arm.name] = (now_ns, target[channels].copy())
        start_ns, origin = self._following[arm.name]
        elapsed = now_ns - start_ns
        weight = 1.0 if self.ramp_ns <= 0 or elapsed >= self.ramp_ns else mr.QuinticTimeScaling(self.ramp_ns, elapsed)
        target[channels] = origin + weight * (leader - origin)
