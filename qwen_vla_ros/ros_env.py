"""Process environment for ROS: the shipped DDS profile and a guard against shadowed rclpy.

No rclpy import here, so runners can prepare a child's environment before any DDS
participant exists (FastDDS reads its profile when the first participant is created).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from qwen_vla_ros.paths import config_dir

DDS_PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
log = logging.getLogger(__name__)


def dds_profile_path() -> Path:
    return config_dir() / "fastdds_shm.xml"


def with_dds_profile(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` using the shipped FastDDS profile, unless the user chose their own."""
    result = dict(env)
    result.setdefault(DDS_PROFILE_ENV, str(dds_profile_path()))
    return result


def apply_dds_profile(env: MutableMapping[str, str] = os.environ) -> str:
    """Set the profile in this process before rclpy.init; returns the profile in effect."""
    env.setdefault(DDS_PROFILE_ENV, str(dds_profile_path()))
    return env[DDS_PROFILE_ENV]


def rclpy_origin_problem(rclpy_file: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Explain why an rclpy import looks wrong for this machine, or None when it is fine.

    With a ROS distribution sourced (ROS_DISTRO set), rclpy must come from that distribution
    (a path under AMENT_PREFIX_PATH or /opt/ros). PyPI wheels in a venv would shadow it and
    mismatch the distribution's message ABI.
    """
    distro = env.get("ROS_DISTRO")
    if not distro:
        return None
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + ["/opt/ros"]
    resolved = str(Path(rclpy_file).resolve())
    if any(resolved.startswith(str(Path(p).resolve())) for p in prefixes):
        return None
    return (
        f"ROS {distro} is sourced but rclpy was imported from {resolved}, outside the distribution "
        f"({', '.join(prefixes)}). Uninstall the ros-* PyPI wheels from this environment, or create "
        "the venv with --system-site-packages and without the 'ros-wheels' extra."
    )
