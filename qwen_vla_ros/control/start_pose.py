"""The start pose as a command source: every configured arm goes to ``start_pose.joints`` before
the policy gets control, so trials start from the same place (docs/operation.md, "Start pose").

The source only names the goal; the controller's safety stages (ramp, velocity and
acceleration limits of each joint) shape the motion there, as for any source. Arrival is
judged from the measured joint states, never from the command. No ROS here: the node
selects this source, waits for :meth:`StartPoseSource.arrived` and hands back to the policy.
"""
from __future__ import annotations

import numpy as np

from qwen_vla_ros.config.hardware import StartPose
from qwen_vla_ros.control.feedback import Feedback
from qwen_vla_ros.control.layout import CommandLayout

GRIPPER_COMMAND_TOLERANCE = 1e-6  # normalised: the command settles on its goal exactly, within rounding


class StartPoseSource:
    def __init__(self, layout: CommandLayout, pose: StartPose, name: str = "start_pose"):
        """``name``: the source's name in the controller (the hand-back's sleep pose is another one)."""
        self.layout, self.pose, self.name = layout, pose, name
        self.goal: np.ndarray | None = None

    def begin(self, command: np.ndarray) -> None:
        """Aim at the pose from ``command`` (the last one sent): channels the pose leaves out (other arms, grippers
        without a ``start_pose.grippers`` value) stay where they are."""
        goal = command.copy()
        for arm in self.layout.arms:
            if arm.name in self.pose.joints:
                goal[arm.joint_index] = self.pose.joints[arm.name]
            if arm.name in self.pose.grippers and arm.gripper_index is not None:
                goal[arm.gripper_index] = self.pose.grippers[arm.name]
        self.goal = goal

    def target(self, now_ns: int, feedback: Feedback) -> np.ndarray | None:
        return self.goal

    def tick(self, now_ns: int, command: np.ndarray, dt_s: float) -> None:
        """The goal does not move."""

    def errors(self, measured: np.ndarray) -> dict[str, float]:
        """Largest absolute joint error of each posed arm (rad), from measured command-space values."""
        return {arm.name: float(np.max(np.abs(measured[arm.joint_index] - np.asarray(self.pose.joints[arm.name]))))
                for arm in self.layout.arms if arm.name in self.pose.joints}

    def arrived(self, measured: np.ndarray, command: np.ndarray) -> bool:
        """Every posed arm's measured joints are within the tolerance, and the gripper commands have reached their
        values (judged on the command: a gripper stopped by what it holds still counts; without this a hold
        that follows the arrival would freeze a gripper halfway)."""
        grippers_done = all(abs(command[arm.gripper_index] - self.pose.grippers[arm.name]) <= GRIPPER_COMMAND_TOLERANCE
                            for arm in self.layout.arms
                            if arm.name in self.pose.grippers and arm.gripper_index is not None)
        return grippers_done and all(error <= self.pose.tolerance_rad for error in self.errors(measured).values())
