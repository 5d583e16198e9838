"""A scripted top-down pick with one ALOHA arm, for tests and benchmarks of the MuJoCo cell.

It exercises what a policy needs from the sim (commands, contacts, the success signal)
without a model: waypoints above, at and over the cube are solved with the arm's PoE model
(config) in the arm's base frame, which is read from the MJCF body pose.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import modern_robotics as mr
import numpy as np

from qwen_vla_ros.embodiments.gripper import normalized_to_joint
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.sim.aloha import MujocoAloha
from qwen_vla_ros.sim.commands import ArmCommand

# Gripper x axis (the approach direction) pointing down: a +90 degree turn about y.
POINT_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


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
        raise ValueError(f"no top-down IK solution for {np.round(point_base, 3).tolist()} in the arm's base frame")
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


def commands(sim: MujocoAloha, plan: list[Waypoint], arm_name: str = "right") -> Iterator[ArmCommand]:
    """One command per control period, moving linearly in joint space between waypoints."""
    arm = sim.config.arm(arm_name)
    previous = sim.data.qpos[sim.arms[arm_name].qpos].copy()
    for waypoint in plan:
        steps = max(1, round(waypoint.duration_s / sim.period_s))
        for k in range(1, steps + 1):
            joints = previous + (waypoint.joints - previous) * k / steps
            yield ArmCommand(dict(zip(arm.joint_names, joints)), normalized_to_joint(waypoint.gripper, arm.gripper))
        previous = waypoint.joints
