"""Inverse kinematics and the BridgeData end-effector delta, on the PoE model of an arm.

The solver is damped least squares over the error of the end-effector point (metres) and
its orientation in world axes (radians), the same frame in which BridgeData deltas are
expressed. The damping shrinks with the error, so steps near a solution are plain
Gauss-Newton (converging in a few iterations), while far targets, unreachable ones and
near-singular configurations get the configured damping, which keeps steps bounded. Joint
limits are enforced on every iterate, so the answer is always a command the arm may take.
"""
from __future__ import annotations

from dataclasses import dataclass

import modern_robotics as mr
import numpy as np
from scipy.spatial.transform import Rotation

from qwen_vla_ros.config.hardware import Arm, EndEffectorDelta
from qwen_vla_ros.embodiments.kinematics import ArmKinematics

MAX_JOINT_STEP_RAD = 0.5  # per iteration; keeps a lightly damped step near a singularity from flinging the arm
STALL_ITERATIONS, STALL_IMPROVEMENT = 10, 1e-3  # give up after 10 iterations without 0.1% progress
MIN_DAMPING_FRACTION = 1e-4  # of ik_damping^2, so the system stays solvable when joints are frozen at limits


@dataclass(frozen=True)
class IKResult:
    joints: np.ndarray
    converged: bool
    position_error_m: float
    rotation_error_rad: float
    iterations: int


def pose_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """[rotation (world axes, rad), translation (m)] that takes ``current`` to ``target``."""
    rotation = mr.so3ToVec(mr.MatrixLog3(target[:3, :3] @ current[:3, :3].T))
    return np.concatenate([rotation, target[:3, 3] - current[:3, 3]])


def apply_ee_delta(pose: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """BridgeData delta [dx, dy, dz, droll, dpitch, dyaw]: translate in the base frame, then
    rotate about the end-effector position in world (base) axes, extrinsic x-y-z."""
    delta = np.asarray(delta, dtype=float)
    result = np.array(pose, dtype=float, copy=True)
    result[:3, 3] = pose[:3, 3] + delta[:3]
    result[:3, :3] = Rotation.from_euler("xyz", delta[3:6]).as_matrix() @ pose[:3, :3]
    return result


def pose_to_xyzrpy(pose: np.ndarray) -> np.ndarray:
    """[x, y, z, roll, pitch, yaw] with the same extrinsic x-y-z convention as the deltas."""
    return np.concatenate([pose[:3, 3], Rotation.from_matrix(pose[:3, :3]).as_euler("xyz")])


class ArmIK:
    """Damped least-squares IK for one arm, with its joint limits and solver settings from config."""

    def __init__(self, kinematics: ArmKinematics, lower: np.ndarray, upper: np.ndarray, settings: EndEffectorDelta):
        self.kinematics = kinematics
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.settings = settings

    @classmethod
    def from_config(cls, arm: Arm) -> ArmIK:
        settings = arm.ee_delta or EndEffectorDelta(channels=["dx", "dy", "dz", "droll", "dpitch", "dyaw"])
        lower = np.array([j.limits.lower for j in arm.joints])
        upper = np.array([j.limits.upper for j in arm.joints])
        return cls(ArmKinematics.from_config(arm), lower, upper, settings)

    def _point_jacobian(self, pose: np.ndarray, space_jacobian: np.ndarray) -> np.ndarray:
        """Rows: angular velocity (world axes), then the velocity of the end-effector point."""
        angular, linear = space_jacobian[:3], space_jacobian[3:]
        return np.vstack([angular, linear - mr.VecToso3(pose[:3, 3]) @ angular])

    def _step(self, jacobian: np.ndarray, error: np.ndarray, damping_sq: float, joints: np.ndarray) -> np.ndarray:
        """DLS step; joints sitting on a limit that the step would push further are frozen and the rest re-solved."""
        frozen = np.zeros(jacobian.shape[1], dtype=bool)
        while True:
            free = jacobian * ~frozen
            step = free.T @ np.linalg.solve(free @ free.T + damping_sq * np.eye(6), error)
            pushing = ((joints <= self.lower) & (step < 0)) | ((joints >= self.upper) & (step > 0))
            if not np.any(pushing & ~frozen):
                return step
            frozen |= pushing

    def solve(self, target: np.ndarray, seed: np.ndarray, min_iterations: int = 0) -> IKResult:
        """Joints reaching ``target`` (4x4), starting from ``seed`` (the previous command).

        When the target cannot be reached, returns the closest pose found (``converged`` False)
        so the caller can move there and warn. ``min_iterations=1`` takes a step even towards a
        target already within tolerance of the seed: a slow jog moves by less than the
        tolerance per period, and would otherwise never move at all.
        """
        settings = self.settings
        joints = np.clip(np.asarray(seed, dtype=float), self.lower, self.upper)
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        stalled = 0
        for iteration in range(settings.ik_max_iterations + 1):
            pose, space_jacobian = self.kinematics.forward_and_jacobian(joints)
            error = pose_error(target, pose)
            rotation_error, position_error = float(np.linalg.norm(error[:3])), float(np.linalg.norm(error[3:]))
            norm = float(np.linalg.norm(error))
            stalled = 0 if best is None or norm < best[0] * (1.0 - STALL_IMPROVEMENT) else stalled + 1
            if best is None or norm < best[0]:
                best = (norm, joints.copy(), error)
            within = position_error < settings.ik_position_tolerance_m and rotation_error < settings.ik_rotation_tolerance_rad
            if within and iteration >= min_iterations:
                return IKResult(joints, True, position_error, rotation_error, iteration)
            if iteration == settings.ik_max_iterations or stalled >= STALL_ITERATIONS:
                break  # out of iterations, or no longer getting closer: the target is out of reach
            jacobian = self._point_jacobian(pose, space_jacobian)
            damping_sq = settings.ik_damping**2 * max(min(1.0, float(np.linalg.norm(error))), MIN_DAMPING_FRACTION)
            step = self._step(jacobian, error, damping_sq, joints)
            largest = float(np.max(np.abs(step)))
            if largest > MAX_JOINT_STEP_RAD:
                step *= MAX_JOINT_STEP_RAD / largest
            joints = np.clip(joints + step, self.lower, self.upper)
        assert best is not None  # the loop runs at least once
        _, joints, error = best
        return IKResult(joints, False, float(np.linalg.norm(error[3:])), float(np.linalg.norm(error[:3])), iteration)
