"""Joint-state readings as the Interbotix driver reports them, for core tests without ROS."""
from __future__ import annotations

from qwen_vla_ros.config import EmbodimentConfig

START_POSE = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0]


def aloha_joints(config: EmbodimentConfig, gripper: float = 0.5,
                 pose: list[float] = START_POSE) -> dict[str, dict[str, float]]:
    """arm -> {joint: position}: the arm joints, the gripper motor and both finger positions (m)."""
    readings = {}
    for arm in config.arms:
        g = arm.gripper
        finger = g.finger_close + gripper * (g.finger_open - g.finger_close)
        readings[arm.name] = {**dict(zip(arm.joint_names, pose)), g.joint: 1.0, g.finger_joint: finger,
                              "right_finger": -finger}
    return readings
