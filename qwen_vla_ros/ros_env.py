"""Process environment for ROS: which DDS profile and discovery range a process runs with, the
SROS2 variables, and a guard against shadowed rclpy.

No rclpy import here, so runners can prepare a child's environment before any DDS
participant exists (FastDDS reads its profile when the first participant is created).

Single host is the default: the profile restricts DDS to shared memory and loopback UDP, so
nothing outside this machine reaches the nodes (docs/security.md). Multi-host is chosen with
``QWEN_VLA_MULTI_HOST=true``, which ``up --multi-host`` and ``multi_host:=true`` set for every
process; each process resolves the same variable the same way (:func:`dds_environment`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath

from qwen_vla_ros.paths import config_dir

FASTDDS_PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3 (Kilted on); it still reads the old name too
FASTRTPS_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2 (Humble, Jazzy) reads only this one
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
MULTI_HOST_ENV = "QWEN_VLA_MULTI_HOST"
DISCOVERY_RANGE_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"
SINGLE_HOST_PROFILE = "fastdds_shm.xml"
MULTI_HOST_PROFILE = "fastdds_multi_host.xml"
SECURITY_ENABLE_ENV = "ROS_SECURITY_ENABLE"
SECURITY_STRATEGY_ENV = "ROS_SECURITY_STRATEGY"
SECURITY_KEYSTORE_ENV = "ROS_SECURITY_KEYSTORE"
ENCLAVE_ROOT = "/qwen_vla"
_TRUE = ("true", "1", "yes", "on")
log = logging.getLogger(__name__)


def profile_variable(env: Mapping[str, str] = os.environ) -> str:
    """The variable this interpreter's Fast DDS reads its XML profile from.

    Fast DDS 2 (Humble, Jazzy) ignores ``FASTDDS_DEFAULT_PROFILES_FILE``: a Jazzy node given
    only that name ran on the default transports, neither confined to the host nor carrying
    camera frames over shared memory. Fast DDS 3 reads the old name as well, but warns on every
    start. A sourced distribution names itself (``ROS_DISTRO``); the PyPI wheels carry Fast DDS 2
    as ``ros-fastrtps`` and 3 as ``ros-fastdds``.
    """
    distro = env.get("ROS_DISTRO", "").strip().lower()
    if distro:
        return FASTRTPS_PROFILE_ENV if distro in FAST_DDS_2_DISTROS else FASTDDS_PROFILE_ENV
    try:
        version("ros-fastrtps")
    except PackageNotFoundError:
        return FASTDDS_PROFILE_ENV
    return FASTRTPS_PROFILE_ENV


DDS_PROFILE_ENV = profile_variable()  # the one this process's Fast DDS reads


def dds_profile_path(multi_host: bool = False) -> Path:
    """The shipped profile of a mode: loopback and shared memory, or UDP on every interface too."""
    return config_dir() / (MULTI_HOST_PROFILE if multi_host else SINGLE_HOST_PROFILE)


def is_multi_host(env: Mapping[str, str] = os.environ) -> bool:
    """Only an explicit yes widens DDS beyond this host; anything else (a typo too) stays confined."""
    return env.get(MULTI_HOST_ENV, "").strip().lower() in _TRUE


def own_profile(env: Mapping[str, str]) -> str | None:
    """The user's FastDDS profile, or None when none is set or it is one of the shipped ones.

    A shipped profile (recognised by its file name, wherever it is installed) is not a choice
    of the user's: the mode picks between them, so an old ``export`` of the single-host
    profile does not keep multi-host mode from working, nor the reverse.
    """
    for variable in (DDS_PROFILE_ENV, FASTDDS_PROFILE_ENV, FASTRTPS_PROFILE_ENV):
        profile = env.get(variable, "").strip()
        if profile and PurePosixPath(profile).name not in (SINGLE_HOST_PROFILE, MULTI_HOST_PROFILE):
            return profile
    return None


def dds_environment(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The DDS variables a process runs with, given the environment it inherits.

    Single host: the confined profile and discovery range LOCALHOST (forced: the range alone
    confines nothing, the profile does, but a wider range would only announce the nodes to
    peers that then cannot reach them). Multi-host: the multi-host profile and range SUBNET,
    unless the user chose a range other than LOCALHOST. A profile of the user's own wins in both.
    """
    multi_host = is_multi_host(env)
    profile = own_profile(env) or str(dds_profile_path(multi_host))
    discovery_range = env.get(DISCOVERY_RANGE_ENV, "").strip()
    if not multi_host:
        discovery_range = "LOCALHOST"
    elif discovery_range.upper() in ("", "LOCALHOST"):
        discovery_range = "SUBNET"
    return {DDS_PROFILE_ENV: profile, DISCOVERY_RANGE_ENV: discovery_range, MULTI_HOST_ENV: str(multi_host).lower()}


def dds_notice(env: Mapping[str, str] = os.environ) -> str:
    """One line saying who may reach the nodes under ``env``: shown by ``up``, ``demo`` and each node."""
    settings = dds_environment(env)
    if own_profile(env):
        return (f"DDS: your own profile {settings[DDS_PROFILE_ENV]} ({DDS_PROFILE_ENV}) decides which networks "
                "reach these nodes, not qwen_vla_ros's single-host confinement")
    if is_multi_host(env):
        return ("DDS: multi-host mode: UDP on every interface, discovery range "
                f"{settings[DISCOVERY_RANGE_ENV]}; anyone on those networks can reach the robot's nodes "
                "unless SROS2 is on (docs/security.md)")
    return "DDS: single-host mode: shared memory and loopback only; no other machine can reach these nodes"


def with_dds_profile(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with the DDS variables of its mode (:func:`dds_environment`)."""
    return {**env, **dds_environment(env)}


def apply_dds_profile(env: MutableMapping[str, str] = os.environ) -> str:
    """Set the DDS variables in this process before rclpy.init; returns the profile in effect."""
    env.update(dds_environment(env))
    return env[DDS_PROFILE_ENV]


def enclave_name(process: str) -> str:
    """The SROS2 enclave of one of the graph's processes (``/qwen_vla/<process>``)."""
    return f"{ENCLAVE_ROOT}/{process}"


def security_environment(keystore: str) -> dict[str, str]:
    """SROS2 on, enforced: a node whose enclave is missing fails instead of running open."""
    return {SECURITY_KEYSTORE_ENV: keystore, SECURITY_ENABLE_ENV: "true", SECURITY_STRATEGY_ENV: "Enforce"}


def security_requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether anything in ``env`` asks for DDS security (a misspelt yes counts: it must not run open)."""
    return env.get(SECURITY_ENABLE_ENV, "").strip().lower() in _TRUE


def security_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """Why security asked for in ``env`` would not hold, or None (also when none is asked for).

    rcl turns security on only for ``ROS_SECURITY_ENABLE`` exactly ``true``, and with any
    strategy but ``Enforce`` it starts a node without security when its enclave is missing:
    both would run open while the user believes otherwise, so both are refused here.
    """
    if not security_requested(env):
        return None
    value = env[SECURITY_ENABLE_ENV]
    if value != "true":
        return f"{SECURITY_ENABLE_ENV}={value!r}: ROS enables security only for exactly 'true'"
    strategy = env.get(SECURITY_STRATEGY_ENV, "")
    if strategy != "Enforce":
        return (f"{SECURITY_STRATEGY_ENV}={strategy!r}: only 'Enforce' keeps a node from running without security "
                "when its enclave is missing")
    keystore = env.get(SECURITY_KEYSTORE_ENV, "")
    if not keystore or not (Path(keystore) / "enclaves").is_dir():
        return (f"{SECURITY_KEYSTORE_ENV}={keystore!r} is no keystore (no enclaves/ folder): create it with "
                "'ros2 security create_keystore' (docs/security.md)")
    return None


def missing_enclaves(keystore: str, enclaves: list[str]) -> list[str]:
    """The enclaves (``/qwen_vla/node``) that have no folder under ``keystore/enclaves``."""
    root = Path(keystore) / "enclaves"
    return [name for name in enclaves if not (root / name.strip("/")).is_dir()]


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
