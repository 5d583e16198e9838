"""Hand-back decisions (no ROS): when the arms count as holding, and the sleep pose to visit first.

At shutdown the controller stops sending commands only once every arm channel is at rest:
a driver left with a moving last command (a position mode joint still travelling towards
it) would finish that motion unsupervised. ``nodes.hand_back`` runs the sequence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import StartPose
from qwen_vla_ros.control.layout import CommandLayout


def arm_channels(layout: CommandLayout) -> np.ndarray:
    """Command indices of every arm joint and gripper."""
    indices = [int(i) for arm in layout.arms for i in arm.joint_index]
    indices += [arm.gripper_index for arm in layout.arms if arm.gripper_index is not None]
    return np.array(sorted(indices), dtype=int)


def at_rest(layout: CommandLayout, velocity: np.ndarray, rest_velocity: float) -> bool:
    """Every arm channel's last commanded velocity is within ``rest_velocity``."""
    return bool(np.all(np.abs(velocity[arm_channels(layout)]) <= rest_velocity))


def sleep_pose(config: EmbodimentConfig, sleep_positions: Mapping[str, Sequence[float]],
               tolerance_rad: float) -> tuple[StartPose | None, list[str]]:
    """The drivers' sleep positions as a pose to move to, and why an arm was left out (a position the
    driver gave that the config's joint limits do not allow, or the wrong number of values)."""
    joints: dict[str, list[float]] = {}
    problems = []
    for arm in config.arms:
        positions = sleep_positions.get(arm.name)
        if positions is None:
            continue
        if len(positions) != len(arm.joints):
            problems.append(f"arm {arm.name!r}: {len(positions)} sleep positions for {len(arm.joints)} joints")
            continue
        outside = [f"{joint.name} = {value:.4g}" for joint, value in zip(arm.joints, positions, strict=True)
                   if not joint.limits.lower <= value <= joint.limits.upper]
        if outside:
            problems.append(f"arm {arm.name!r}: sleep positions outside the config's limits: {', '.join(outside)}")
            continue
        joints[arm.name] = [float(v) for v in positions]
    if not joints:
        return None, problems
    return StartPose(joints=joints, tolerance_rad=tolerance_rad, timeout_s=config.hand_back.timeout_s), problems
