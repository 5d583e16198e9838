"""Scripted ALOHA experts for the MuJoCo cell: a one-arm top-down pick, and the two-stage
transfer-cube expert that makes demonstrations.

They exercise what a policy needs from the sim (commands, contacts, the success signal)
without a model: waypoints are solved with each arm's PoE model (config) in the arm's base
frame, which is read from the MJCF body pose. The transfer expert plans the whole episode
from the cube's resting position, like ACT's scripted demos (end-effector waypoints, then
replayed as joints), so the same actions can be played physics-only or streamed as action
chunks through the ROS graph (``qwen-vla-ros collect``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import modern_robotics as mr
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import Arm, Gripper
from qwen_vla_ros.config.loader import ConfigError
from qwen_vla_ros.embodiments.gripper import normalized_to_joint
from qwen_vla_ros.embodiments.ik import ArmIK
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.sim.aloha import MujocoAloha
from qwen_vla_ros.sim.commands import ArmCommand
from qwen_vla_ros.sim.world import Simulation

# Gripper x axis (the approach direction) pointing down: a +90 degree turn about y.
POINT_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


class UnreachablePoseError(QwenVlaError, ValueError):
    """The scripted expert cannot reach a pose its plan needs (the object lies out of the arm's reach).

    A ``ValueError`` as well: it is the input (the object's position) that cannot be served."""


@dataclass(frozen=True)
class Waypoint:
    joints: np.ndarray
    gripper: float  # normalised, 1 = open
    duration_s: float


def base_from_world(sim: MujocoAloha, arm_name: str) -> np.ndarray:
    """4x4 transform taking world points into the arm's base frame (its MJCF root body)."""
    body = sim.model.body(sim.settings.mjcf_arms[arm_name])
    world_base = mr.RpToTrans(sim.data.xmat[body.id].reshape(3, 3), sim.data.xpos[body.id])
    return mr.TransInv(world_base)


def top_down_ik(kinematics: ArmKinematics, point_base: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Joints putting the end effector at ``point_base``, pointing down, facing away from the base."""
    yaw = np.arctan2(point_base[1], point_base[0])
    facing = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    target = mr.RpToTrans(facing @ POINT_DOWN, point_base)
    joints, converged = mr.IKinSpace(kinematics.screw_axes, kinematics.home, target, guess, 1e-3, 1e-4)
    if not converged:
        raise UnreachablePoseError(f"no top-down IK solution for {np.round(point_base, 3).tolist()} in the arm's base frame")
    return np.asarray(joints)


def pick_plan(sim: MujocoAloha, arm_name: str = "right", lift_m: float = 0.15) -> list[Waypoint]:
    """Open above the object, descend, close, lift."""
    kinematics = ArmKinematics.from_config(sim.config.arm(arm_name))
    to_base = base_from_world(sim, arm_name)
    obj = to_base @ np.append(sim.object_position(), 1.0)
    start = sim.data.qpos[sim.arms[arm_name].qpos].copy()
    above = top_down_ik(kinematics, obj[:3] + [0, 0, 0.10], start)
    at = top_down_ik(kinematics, obj[:3], above)
    lifted = top_down_ik(kinematics, obj[:3] + [0, 0, lift_m], at)
    return [Waypoint(above, 1.0, 1.5), Waypoint(at, 1.0, 1.0), Waypoint(at, 0.0, 1.0), Waypoint(lifted, 0.0, 1.5)]


def _aloha_channels(arm: Arm) -> tuple[list[str], Gripper, str]:
    """Joint action channels, gripper and gripper channel of an arm the expert drives: ALOHA arms have
    all of them; for an arm without, a ConfigError naming it."""
    joint_channels = [j.channel for j in arm.joints if j.channel is not None]
    gripper = arm.gripper
    if len(joint_channels) != len(arm.joints) or gripper is None or gripper.channel is None:
        raise ConfigError(arm.name, [f"arm {arm.name!r} lacks joint or gripper action channels; the scripted expert drives both"])
    return joint_channels, gripper, gripper.channel


def commands(sim: MujocoAloha, plan: list[Waypoint], arm_name: str = "right") -> Iterator[ArmCommand]:
    """One command per control period, moving linearly in joint space between waypoints."""
    arm = sim.config.arm(arm_name)
    _, gripper, _ = _aloha_channels(arm)
    previous = sim.data.qpos[sim.arms[arm_name].qpos].copy()
    for waypoint in plan:
        steps = max(1, round(waypoint.duration_s / sim.period_s))
        for k in range(1, steps + 1):
            joints = previous + (waypoint.joints - previous) * k / steps
            yield ArmCommand(dict(zip(arm.joint_names, joints, strict=True)), normalized_to_joint(waypoint.gripper, gripper))
        previous = waypoint.joints


# --- the two-stage transfer-cube expert -------------------------------------------------


def gripper_frame(approach: np.ndarray | list[float], closing: np.ndarray | list[float]) -> np.ndarray:
    """World rotation of the end effector from its approach (x) and finger-closing (y) axes."""
    approach, closing = np.asarray(approach, dtype=float), np.asarray(closing, dtype=float)
    return np.column_stack([approach, closing, np.cross(approach, closing)])


# Right hand: pointing down, fingers closing along world y (on the cube's y faces). The right
# arm's base faces -x, so its unrolled closing axis is world -y: +y would cost a half turn of
# the forearm (at its joint limit) for the same grasp.
TOP_DOWN = gripper_frame([0.0, 0.0, -1.0], [0.0, -1.0, 0.0])
# Left hand: pointing at the right arm (+x), fingers closing along z (on the cube's top and
# bottom faces), so they pass between the right hand's fingers instead of hitting them.
SIDEWAYS = gripper_frame([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])


@dataclass(frozen=True)
class PoseWaypoint:
    """Reach ``position`` (world, metres) with ``rotation`` (world) and ``gripper`` (1 = open)
    ``duration_s`` after the previous waypoint, on a cosine-eased straight line, or with
    ``joint_space`` on a straight line in joint space (free moves from the start pose, whose
    straight Cartesian path would cross the wrist singularity and whip the wrist round)."""

    duration_s: float
    position: np.ndarray
    rotation: np.ndarray
    gripper: float
    joint_space: bool = False


@dataclass(frozen=True)
class TransferSettings:
    """Where and how slowly the expert hands over. The ALOHA wrist and finger actuators are weak
    (kp 10-200 in the MJCF), so every motion is eased and the grippers get a second to close.

    The held cube hangs ``held_drop_m`` below the right hand's end-effector point (it slips in
    the fingers and the wrist sags), measured on the MJCF; the left hand aims there, with its
    finger tips ``handover_depth_m`` past the cube's near face.
    """

    meet: tuple[float, float, float] = (0.0, 0.5, 0.25)  # world, metres: where the right hand brings the cube
    approach_height_m: float = 0.10
    lift_height_m: float = 0.12
    held_drop_m: float = 0.035
    cube_half_size_m: float = 0.02
    handover_depth_m: float = 0.015
    left_standoff_m: float = 0.15
    left_retreat_m: float = 0.10
    right_retreat: tuple[float, float, float] = (0.10, 0.0, 0.05)


@dataclass(frozen=True)
class Trajectory:
    """One action per control period in the embodiment's action channels (joints in radians,
    grippers normalised), and the time at which each stage starts."""

    actions: np.ndarray  # T x D
    channel_names: tuple[str, ...]
    period_s: float
    stage_starts_s: dict[str, float]

    @property
    def duration_s(self) -> float:
        return len(self.actions) * self.period_s


def world_from_base(sim: MujocoAloha, arm_name: str) -> np.ndarray:
    return mr.TransInv(base_from_world(sim, arm_name))


def transfer_plans(cube: np.ndarray, start: dict[str, np.ndarray], settings: TransferSettings) -> dict[str, list[PoseWaypoint]]:
    """Both arms' waypoints for one episode, from the cube's resting position alone.

    Stage 1 (right): above the cube, down, close, lift, carry to the meeting point. Stage 2:
    the left hand comes in sideways and closes on the held cube, the right opens and backs
    away, the left pulls the cube towards itself. ``start`` is each hand's starting pose
    (4x4 world), which the arm holds until its first move.
    """
    s = settings
    meet = np.asarray(s.meet)
    held = meet - [0.0, 0.0, s.held_drop_m]
    grip = held + [s.handover_depth_m - s.cube_half_size_m, 0.0, 0.0]
    standoff = grip - [s.left_standoff_m, 0.0, 0.0]

    def stay(arm: str, duration_s: float, gripper: float) -> PoseWaypoint:
        return PoseWaypoint(duration_s, start[arm][:3, 3], start[arm][:3, :3], gripper)

    right = [
        stay("right", 0.2, 1.0),
        PoseWaypoint(1.6, cube + [0.0, 0.0, s.approach_height_m], TOP_DOWN, 1.0, joint_space=True),
        PoseWaypoint(0.8, cube, TOP_DOWN, 1.0),
        PoseWaypoint(1.0, cube, TOP_DOWN, 0.0),  # close
        PoseWaypoint(0.6, cube, TOP_DOWN, 0.0),  # let the fingers squeeze
        PoseWaypoint(1.0, cube + [0.0, 0.0, s.lift_height_m], TOP_DOWN, 0.0),
        PoseWaypoint(1.5, meet, TOP_DOWN, 0.0),
        PoseWaypoint(0.6 + 3.0, meet, TOP_DOWN, 0.0),  # hold while the left hand arrives and closes
        PoseWaypoint(0.6, meet, TOP_DOWN, 1.0),  # open
        PoseWaypoint(1.0, meet + np.asarray(s.right_retreat), TOP_DOWN, 1.0),
        PoseWaypoint(1.2, meet + np.asarray(s.right_retreat), TOP_DOWN, 1.0),
    ]
    left = [
        stay("left", 0.2, 1.0),
        PoseWaypoint(3.0, standoff, SIDEWAYS, 1.0, joint_space=True),
        PoseWaypoint(4.3, standoff + [0.07, 0.0, 0.0], SIDEWAYS, 1.0),  # wait for the cube
        PoseWaypoint(1.0, grip, SIDEWAYS, 1.0),
        PoseWaypoint(1.0, grip, SIDEWAYS, 0.0),  # close
        PoseWaypoint(1.6, grip, SIDEWAYS, 0.0),  # hold while the right hand lets go
        PoseWaypoint(1.0, grip - [s.left_retreat_m, 0.0, 0.0], SIDEWAYS, 0.0),
        PoseWaypoint(1.0, grip - [s.left_retreat_m, 0.0, 0.0], SIDEWAYS, 0.0),
    ]
    return {"right": right, "left": left}


def _follow(ik: ArmIK, to_base: np.ndarray, start: np.ndarray, seed: np.ndarray, plan: list[PoseWaypoint],
            period_s: float, ik_every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Joints and gripper per control period along ``plan``.

    Interpolating the pose (not the joints) keeps the hand on the straight line the plan means,
    as ACT's scripted demos do with a mocap body. IK (seeded with the previous solution) runs
    every ``ik_every`` periods and at each waypoint, with joints interpolated in between: the
    pose path barely bends within 0.1 s, and pure-Python IK every period would dominate an
    episode's cost.
    """
    times, knots, grippers = [0.0], [np.asarray(seed, dtype=float)], [plan[0].gripper]
    position, rotation, gripper = start[:3, 3], start[:3, :3], plan[0].gripper
    q, elapsed = knots[0], 0.0

    def solve(pose: np.ndarray, guess: np.ndarray) -> np.ndarray:
        result = ik.solve(to_base @ pose, guess)
        if not result.converged and result.position_error_m > 5e-3:
            raise UnreachablePoseError(f"pose {np.round(pose[:3, 3], 3).tolist()} is out of the arm's reach "
                             f"({result.position_error_m * 1000:.1f} mm off)")
        return result.joints

    for waypoint in plan:
        steps = max(1, round(waypoint.duration_s / period_s))
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix([rotation, waypoint.rotation]))
        end = solve(mr.RpToTrans(waypoint.rotation, waypoint.position), q) if waypoint.joint_space else None
        for k in range(1, steps + 1):
            eased = 0.5 - 0.5 * np.cos(np.pi * k / steps)
            grippers.append(gripper + (waypoint.gripper - gripper) * eased)
            if end is not None:
                times.append(elapsed + k)
                knots.append(q + (end - q) * eased)
                continue
            if k % ik_every and k != steps:
                continue
            target = mr.RpToTrans(slerp(eased).as_matrix(), position + (waypoint.position - position) * eased)
            times.append(elapsed + k)
            knots.append(solve(target, knots[-1]))
        q = knots[-1]
        elapsed += steps
        position, rotation, gripper = waypoint.position, waypoint.rotation, waypoint.gripper
    periods = np.arange(1, int(elapsed) + 1)
    knots_array = np.array(knots)
    joints = np.column_stack([np.interp(periods, times, knots_array[:, j]) for j in range(knots_array.shape[1])])
    return joints, np.array(grippers[1:])


@dataclass(frozen=True)
class ArmFrames:
    """What the expert needs from the MJCF besides config: each arm's base pose in the world
    and the keyframe joints an episode starts from."""

    world_from_base: dict[str, np.ndarray]
    start_joints: dict[str, np.ndarray]

    @classmethod
    def of(cls, sim: MujocoAloha) -> ArmFrames:
        """Read from a cell; call right after a reset, while the arms are at the keyframe."""
        return cls(
            {name: world_from_base(sim, name) for name in sim.arms},
            {name: sim.data.qpos[mj.qpos].copy() for name, mj in sim.arms.items()},
        )


def plan_transfer(config: EmbodimentConfig, period_s: float, cube: np.ndarray, frames: ArmFrames,
                  settings: TransferSettings | None = None) -> Trajectory:
    """The expert's whole episode as actions, from the cube's resting position and the arms'
    starting joints: what a cell's reset reports, so the plan needs no live physics."""
    settings = settings or TransferSettings()
    cube = np.array(cube[:3], dtype=float)
    cube[2] = settings.cube_half_size_m  # resting on the table (a reset drops it from a little above)
    names = tuple(config.action.names)
    solvers = {arm.name: ArmIK.from_config(arm) for arm in config.arms}
    to_base = {name: mr.TransInv(pose) for name, pose in frames.world_from_base.items()}
    starts = {
        name: frames.world_from_base[name] @ solvers[name].kinematics.forward(frames.start_joints[name])
        for name in solvers
    }
    plans = transfer_plans(cube, starts, settings)
    tracks = {
        arm: _follow(solvers[arm], to_base[arm], starts[arm], frames.start_joints[arm], plan, period_s)
        for arm, plan in plans.items()
    }
    length = max(len(joints) for joints, _ in tracks.values())
    actions = np.zeros((length, len(names)))
    for arm in config.arms:
        joint_channels, _, gripper_channel = _aloha_channels(arm)
        joints, grippers = tracks[arm.name]
        pad = length - len(joints)
        joints = np.vstack([joints, np.repeat(joints[-1:], pad, axis=0)])
        grippers = np.concatenate([grippers, np.repeat(grippers[-1:], pad)])
        for index, channel in enumerate(joint_channels):
            actions[:, names.index(channel)] = joints[:, index]
        actions[:, names.index(gripper_channel)] = grippers
    handover_s = sum(w.duration_s for w in plans["right"][:7])
    return Trajectory(actions, names, period_s, {"pick": 0.0, "handover": handover_s})


def transfer_trajectory(sim: MujocoAloha, settings: TransferSettings | None = None) -> Trajectory:
    """:func:`plan_transfer` for a cell just reset (arms at the keyframe, cube where it was drawn)."""
    return plan_transfer(sim.config, sim.period_s, sim.object_position(), ArmFrames.of(sim), settings)


def home_trajectory(config: EmbodimentConfig, period_s: float, current: np.ndarray, frames: ArmFrames,
                    duration_s: float = 2.0) -> Trajectory:
    """From ``current`` (an action vector, e.g. the last one played) back to the start pose with
    open grippers, so a reset does not teleport the arms away from the controller's command."""
    names = tuple(config.action.names)
    home = np.array(current, dtype=float)
    for arm in config.arms:
        joint_channels, _, gripper_channel = _aloha_channels(arm)
        for index, channel in enumerate(joint_channels):
            home[names.index(channel)] = frames.start_joints[arm.name][index]
        home[names.index(gripper_channel)] = 1.0
    steps = max(1, round(duration_s / period_s))
    eased = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, steps + 1) / steps)
    actions = current + (home - current) * eased[:, None]
    return Trajectory(actions, names, period_s, {"home": 0.0})


def action_commands(config: EmbodimentConfig, action: np.ndarray) -> dict[str, ArmCommand]:
    """One action vector as per-arm commands (gripper as the driver's motor angle), for physics-only runs."""
    names = list(config.action.names)
    per_arm: dict[str, ArmCommand] = {}
    for arm in config.arms:
        joint_channels, gripper, gripper_channel = _aloha_channels(arm)
        per_arm[arm.name] = ArmCommand(
            {name: float(action[names.index(c)]) for name, c in zip(arm.joint_names, joint_channels, strict=True)},
            normalized_to_joint(float(action[names.index(gripper_channel)]), gripper),
        )
    return per_arm


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    lifted: bool  # the right hand held the cube off the table at some point (stage 1)
    final_reward: int
    conditions: dict


def run_transfer_episode(sim: Simulation, seed: int, settings: TransferSettings | None = None,
                         settle_s: float = 0.2) -> EpisodeResult:
    """Reset with ``seed``, let the cube settle, then play the expert open loop (physics only)."""
    conditions = sim.reset(np.random.default_rng(seed))
    cell = sim.mujoco
    for _ in range(round(settle_s / sim.period_s)):
        sim.step()
    trajectory = transfer_trajectory(cell, settings)
    lifted = False
    for action in trajectory.actions:
        for arm_name, command in action_commands(sim.config, action).items():
            sim.command_arm(arm_name, command)
        sim.step()
        lifted = lifted or cell.reward() >= 2
    return EpisodeResult(seed, bool(sim.success()), lifted, cell.reward(), conditions)
