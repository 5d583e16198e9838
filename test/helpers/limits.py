"""Limits for judging commands, read without the product: the YAML file itself, the URDF, and
the envelope the robot owner reviewed.

The controller computes its limits through the config models and ``control.layout``; a test
that judges commands against those limits passes whatever that path does (doubled
velocities included). Here the same numbers are taken from the text of ``config/<name>.yaml``
(``yaml.safe_load``, anchors and merge keys resolved by PyYAML), from the URDF expanded by
the real xacro, and from :data:`REVIEWED`, and the tightest of the three judges each channel.
A YAML file is both the product's input and this judge's, so a value doubled in it is
caught by the URDF (joint velocities) or by the reviewed envelope (everything else):
commands that use the doubled limit exceed it, and :func:`envelope_violations` flags the
file itself.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]

# The envelope the robot owner signed off, written by hand here and never read from config/:
# the most any channel of each kind may be commanded, as (velocity, acceleration) per second.
# Joint velocities are the vx300s / wx250s π rad/s of ../shared/reference/robots.md; the
# accelerations and the gripper's normalised rates are this project's reviewed choice for
# smooth motion. A config may be tighter. Raising a number here is a safety decision.
REVIEWED: dict[str, dict[str, tuple[float, float]]] = {
    "aloha": {"joint": (3.14159, 20.0), "gripper": (4.0, 40.0), "gripper_joint": (3.14159, 40.0)},
    "aloha_mobile": {
        "joint": (3.14159, 20.0), "gripper": (4.0, 40.0), "gripper_joint": (3.14159, 40.0),
        # a twist channel's value is itself a velocity: (rate of change, its rate of change)
        "base_linear": (1.0, 5.0), "base_angular": (2.0, 10.0),
    },
    "widowx": {"joint": (3.14159, 15.0), "gripper": (5.0, 50.0), "gripper_joint": (3.14159, 40.0)},
    "mobile_base": {"waypoint": (1.0, 2.0), "base_linear": (1.0, math.inf), "base_angular": (2.0, math.inf)},
}
"""Per embodiment and kind of channel. Base speeds (the value bounds of a base channel) are
reviewed as ``REVIEWED_BASE_SPEED``."""

REVIEWED_BASE_SPEED = {"aloha_mobile": {"base_linear": 0.7, "base_angular": 1.0},
                       "mobile_base": {"base_linear": 1.0, "base_angular": 1.0}}


def raw_config(embodiment: str) -> dict[str, Any]:
    """``config/<embodiment>.yaml`` as PyYAML reads it, nothing of qwen_vla_ros involved (read afresh each
    call, so a test that rewrites the file is judged against what it wrote; parsed once per content)."""
    return copy.deepcopy(_parsed((REPO / "config" / f"{embodiment}.yaml").read_text()))


@cache
def _parsed(text: str) -> dict[str, Any]:
    """Hypothesis judges hundreds of examples against the same file: parse each text once."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def urdf_joint_limits(urdf_file: str) -> dict[str, dict[str, float]]:
    """name -> {lower, upper, velocity} of every limited joint of ``urdf/<urdf_file>`` (xacro-expanded)."""
    import xacro

    document = xacro.process_file(str(REPO / "urdf" / urdf_file)).toxml()
    limits = {}
    for joint in ElementTree.fromstring(document).iter("joint"):
        element = joint.find("limit")
        if element is None:
            continue
        found = {key: float(element.get(key)) for key in ("lower", "upper", "velocity") if element.get(key) is not None}
        if joint.get("type") == "continuous":
            found.pop("lower", None), found.pop("upper", None)
        limits[joint.get("name")] = found
    return limits


@dataclass(frozen=True)
class JudgedLimits:
    """Per command channel: position bounds, velocity and acceleration, from YAML ∩ URDF ∩ review."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray


KEYS = ("lower", "upper", "velocity", "acceleration")


def _tightest(*limits: dict[str, float]) -> tuple[float, float, float, float]:
    def pick(key: str, reduce: Any, default: float) -> float:
        return reduce([float(lim[key]) for lim in limits if lim.get(key) is not None], default=default)

    return pick("lower", max, -math.inf), pick("upper", min, math.inf), pick("velocity", min, math.inf), \
        pick("acceleration", min, math.inf)


def _normalized(gripper: dict[str, Any]) -> dict[str, float]:
    """The gripper motor's limits in the normalised 0 (closed) .. 1 (open) units."""
    span = gripper["joint_open"] - gripper["joint_close"]
    motor = gripper["limits"]
    ends = sorted((bound - gripper["joint_close"]) / span for bound in (motor["lower"], motor["upper"]))
    scaled = {key: motor[key] / abs(span) for key in ("velocity", "acceleration") if motor.get(key) is not None}
    return {"lower": ends[0], "upper": ends[1], **scaled}


def _reviewed(embodiment: str, kind: str) -> dict[str, float]:
    velocity, acceleration = REVIEWED[embodiment][kind]
    return {"velocity": velocity, "acceleration": acceleration}


def _channel_limits(embodiment: str) -> Iterator[tuple[str, tuple[float, float, float, float]]]:
    raw = raw_config(embodiment)
    urdf = urdf_joint_limits(raw["robot"]["urdf"]) if raw.get("arms") else {}
    channels = {c["name"]: c.get("limits", {}) for c in raw["action"]["channels"]}
    for arm in raw.get("arms", []):
        prefix = arm.get("urdf_prefix", "")
        for joint in arm["joints"]:
            judged = [joint["limits"], urdf[prefix + joint["name"]], _reviewed(embodiment, "joint")]
            if joint.get("channel"):
                yield joint["channel"], _tightest(channels[joint["channel"]], *judged)
            else:  # end-effector delta arm: the joints themselves are commanded
                yield prefix + joint["name"], _tightest(*judged)
        gripper = arm.get("gripper")
        if gripper and gripper.get("channel"):
            motor = _tightest(gripper["limits"], urdf.get(prefix + gripper["joint"], {}),
                              _reviewed(embodiment, "gripper_joint"))
            normalized = _normalized({**gripper, "limits": dict(zip(KEYS, motor))})
            yield gripper["channel"], _tightest(channels[gripper["channel"]], normalized, _reviewed(embodiment, "gripper"))
    base = raw.get("base")
    if base:
        speeds = {"base_linear": (base["max_linear"], base["linear_acceleration"]),
                  "base_angular": (base["max_angular"], base["angular_acceleration"])}
        for name, (speed, acceleration) in speeds.items():
            reviewed = REVIEWED[embodiment][name]
            bound = min(speed, REVIEWED_BASE_SPEED[embodiment][name])
            own = channels.get(name, {}) if base["mode"] == "twist" else {}
            yield name, _tightest({"lower": -bound, "upper": bound, "velocity": acceleration},
                                  {"velocity": reviewed[0], "acceleration": reviewed[1]},
                                  {k: own[k] for k in KEYS if k in own})


def judged_limits(embodiment: str, names: Sequence[str]) -> JudgedLimits:
    """The judge's limits for the command channels ``names`` (in that order) of ``embodiment``."""
    found = dict(_channel_limits(embodiment))
    missing = [n for n in names if n not in found]
    assert not missing, f"no independent limits for command channels {missing} of {embodiment}"
    table = np.array([found[n] for n in names], dtype=float).reshape(len(names), 4)
    return JudgedLimits(tuple(names), *(table[:, i].copy() for i in range(4)))


def envelope_violations(embodiment: str) -> list[str]:
    """Every velocity and acceleration in ``config/<embodiment>.yaml`` above the reviewed envelope."""
    raw = raw_config(embodiment)
    found = []

    def check(where: str, limits: dict[str, Any], kind: str) -> None:
        for key, reviewed in zip(("velocity", "acceleration"), REVIEWED[embodiment][kind]):
            if limits.get(key) is not None and limits[key] > reviewed:
                found.append(f"{where}.{key} = {limits[key]} > reviewed {reviewed}")

    arms = {a["name"]: a for a in raw.get("arms", [])}
    gripper_channels = {a["gripper"]["channel"] for a in arms.values() if a.get("gripper")}
    base = raw.get("base") or {}
    for i, channel in enumerate(raw["action"]["channels"]):
        name = channel["name"]
        if name in base.get("channels", []):
            kind = name if base["mode"] == "twist" else "waypoint"
        else:
            kind = "gripper" if name in gripper_channels else "joint"
        if name in ("dx", "dy", "dz", "droll", "dpitch", "dyaw"):
            continue  # end-effector deltas: their rates are enforced on the joints after IK
        check(f"action.channels[{i}] ({name})", channel.get("limits", {}), kind)
    for arm in arms.values():
        for j, joint in enumerate(arm["joints"]):
            check(f"arms.{arm['name']}.joints[{j}] ({joint['name']})", joint["limits"], "joint")
        if arm.get("gripper"):
            check(f"arms.{arm['name']}.gripper", arm["gripper"]["limits"], "gripper_joint")
    if base:
        for name, (speed_key, acceleration_key) in {"base_linear": ("max_linear", "linear_acceleration"),
                                                    "base_angular": ("max_angular", "angular_acceleration")}.items():
            if base[speed_key] > REVIEWED_BASE_SPEED[embodiment][name]:
                found.append(f"base.{speed_key} = {base[speed_key]} > reviewed {REVIEWED_BASE_SPEED[embodiment][name]}")
            if base[acceleration_key] > REVIEWED[embodiment][name][0]:
                found.append(f"base.{acceleration_key} = {base[acceleration_key]} > reviewed {REVIEWED[embodiment][name][0]}")
    return found
