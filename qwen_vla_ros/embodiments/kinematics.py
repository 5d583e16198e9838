"""Product-of-exponentials kinematics for the Interbotix arms, from config.

modern_robotics implements the PoE algebra; this module binds it to an arm config so the
rest of the runtime asks "where is the end effector" in the arm's own base frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import modern_robotics as mr
import numpy as np

from qwen_vla_ros.config.hardware import Arm


@dataclass(frozen=True)
class ArmKinematics:
    home: np.ndarray  # 4x4 end-effector pose at zero joint angles
    screw_axes: np.ndarray  # 6 x n, space-frame screws (w, v) as columns

    @classmethod
    def from_config(cls, arm: Arm) -> ArmKinematics:
        home = np.asarray(arm.kinematics.home, dtype=float)
        screws = np.asarray(arm.kinematics.screw_axes, dtype=float).T
        return cls(home=home, screw_axes=screws)

    @property
    def dof(self) -> int:
        return self.screw_axes.shape[1]

    def forward(self, joints: np.ndarray) -> np.ndarray:
        """4x4 pose of the end effector in the arm's base frame."""
        joints = np.asarray(joints, dtype=float)
        if joints.shape != (self.dof,):
            raise ValueError(f"expected {self.dof} joint values, got shape {joints.shape}")
        return mr.FKinSpace(self.home, self.screw_axes, joints)

    def jacobian(self, joints: np.ndarray) -> np.ndarray:
        """6 x n space Jacobian, rows (w, v)."""
        return mr.JacobianSpace(self.screw_axes, np.asarray(joints, dtype=float))

    def forward_and_jacobian(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pose and space Jacobian from one pass over the joint exponentials (IK's inner loop)."""
        joints = np.asarray(joints, dtype=float)
        transform = np.eye(4)
        jacobian = np.empty((6, self.dof))
        for index in range(self.dof):
            jacobian[:, index] = mr.Adjoint(transform) @ self.screw_axes[:, index]
            transform = transform @ mr.MatrixExp6(mr.VecTose3(self.screw_axes[:, index] * joints[index]))
        return transform @ self.home, jacobian
