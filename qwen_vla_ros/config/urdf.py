"""Joint limits of the URDF an embodiment names, so config limits outside them are refused.

The URDF (expanded from the shipped xacro) is the robot's own statement of how far and how
fast each joint may move. A config joint ``arms[i].joints[j]`` is the URDF joint
``arms[i].urdf_prefix + name`` in ``robot.urdf``; its position limits must lie inside the
URDF's (continuous joints have none) and its velocity limit must not exceed the URDF's.
The loader runs this check after the model's own, so ``check-config`` and every node that
loads an embodiment refuse the same files.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xacro

from qwen_vla_ros.paths import urdf_dir

if TYPE_CHECKING:
    from qwen_vla_ros.config.base import Limits
    from qwen_vla_ros.config.embodiment import EmbodimentConfig

TOLERANCE = 1e-9
"""Slack for limits copied from the URDF and written with the same digits."""


@dataclass(frozen=True)
class UrdfJoint:
    name: str
    type: str
    lower: float | None
    upper: float | None
    velocity: float | None


def resolve_urdf(name: str) -> Path:
    """``robot.urdf``: a file in the package's urdf/ folder, or an absolute path."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else urdf_dir() / path


def _optional_float(text: str) -> float | None:
    return float(text) if text else None


@functools.lru_cache(maxsize=16)
def _read_joints(path: str, modified_ns: int) -> dict[str, UrdfJoint]:
    """Expand the xacro (plain URDF passes through unchanged); cached per file version."""
    document = xacro.process_file(path)
    joints = {}
    for element in document.getElementsByTagName("joint"):
        limits = element.getElementsByTagName("limit")
        limit = limits[0] if limits else None
        joints[element.getAttribute("name")] = UrdfJoint(
            name=element.getAttribute("name"),
            type=element.getAttribute("type"),
            lower=_optional_float(limit.getAttribute("lower")) if limit else None,
            upper=_optional_float(limit.getAttribute("upper")) if limit else None,
            velocity=_optional_float(limit.getAttribute("velocity")) if limit else None,
        )
    return joints


def urdf_joints(path: Path) -> dict[str, UrdfJoint]:
    return _read_joints(str(path), path.stat().st_mtime_ns)


def _limit_problems(where: str, limits: Limits, joint: UrdfJoint, urdf: str) -> list[str]:
    source = f"joint {joint.name!r} in {urdf}"
    problems = []
    if joint.type != "continuous" and joint.lower is not None and limits.lower < joint.lower - TOLERANCE:
        problems.append(f"{where}.lower: {limits.lower} lies below the URDF's lower limit {joint.lower} ({source})")
    if joint.type != "continuous" and joint.upper is not None and limits.upper > joint.upper + TOLERANCE:
        problems.append(f"{where}.upper: {limits.upper} lies above the URDF's upper limit {joint.upper} ({source})")
    if joint.velocity is not None and limits.velocity is not None and limits.velocity > joint.velocity + TOLERANCE:
        problems.append(
            f"{where}.velocity: {limits.velocity} exceeds the URDF's velocity limit {joint.velocity} ({source})"
        )
    return problems


def urdf_limit_problems(config: EmbodimentConfig) -> list[str]:
    """One line per config limit outside the URDF, each naming its field path; empty when all fit."""
    path = resolve_urdf(config.robot.urdf)
    if not path.is_file():
        return [f"robot.urdf: {path} does not exist"]
    try:
        joints = urdf_joints(path)
    except Exception as exc:  # noqa: BLE001 - xacro evaluates Python expressions: any error can surface
        return [f"robot.urdf: cannot expand {path}: {type(exc).__name__}: {exc}"]
    problems = []
    for arm_index, arm in enumerate(config.arms):
        limited = [(f"arms[{arm_index}].joints[{i}]", j.name, j.limits) for i, j in enumerate(arm.joints)]
        if arm.gripper is not None:
            limited.append((f"arms[{arm_index}].gripper", arm.gripper.joint, arm.gripper.limits))
        for where, name, limits in limited:
            joint = joints.get(arm.urdf_prefix + name)
            if joint is None:
                problems.append(f"{where}: {config.robot.urdf} has no joint {arm.urdf_prefix + name!r} "
                                "(urdf_prefix + name)")
                continue
            problems += _limit_problems(f"{where}.limits", limits, joint, config.robot.urdf)
        if arm.gripper is not None:
            finger = joints.get(arm.urdf_prefix + arm.gripper.finger_joint)
            where = f"arms[{arm_index}].gripper"
            if finger is None:
                problems.append(f"{where}.finger_joint: {config.robot.urdf} has no joint "
                                f"{arm.urdf_prefix + arm.gripper.finger_joint!r}")
                continue
            for field in ("finger_open", "finger_close"):
                position = getattr(arm.gripper, field)
                if finger.lower is not None and finger.upper is not None and not (
                    finger.lower - TOLERANCE <= position <= finger.upper + TOLERANCE
                ):
                    problems.append(f"{where}.{field}: {position} lies outside the URDF's [{finger.lower}, "
                                    f"{finger.upper}] for joint {finger.name!r} ({config.robot.urdf})")
    return problems
