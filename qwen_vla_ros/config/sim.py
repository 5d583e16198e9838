"""Simulator settings: MuJoCo ALOHA and the kinematic arm and base, with their randomisation."""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from qwen_vla_ros.config.base import MAX_RATE_HZ, StrictModel


class Interval(StrictModel):
    """A closed range ``[lower, upper]`` to sample uniformly from; equal ends fix the value."""

    lower: float
    upper: float

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: object) -> object:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"an interval is [lower, upper], got {len(value)} values")
            return {"lower": value[0], "upper": value[1]}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"interval ends must be finite, got [{self.lower}, {self.upper}]")
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not exceed upper ({self.upper})")
        return self


class SimCommon(StrictModel):
    """Settings every simulator shares: camera rendering, and the base when the embodiment has one."""

    camera_rate_hz: float = Field(default=10.0, ge=0, le=MAX_RATE_HZ, description="0 renders no cameras")
    render_width: int = Field(default=320, gt=0)
    render_height: int = Field(default=240, gt=0)
    cmd_vel_timeout_s: float = Field(
        default=0.3, gt=0, description="the simulated base stops this long after the last Twist (SLATE: 300 ms)"
    )
    odom_frame: str = "odom"
    base_frame: str = "base_link"


class AlohaRandomization(StrictModel):
    """Out-of-distribution factors drawn at every reset; an unset factor keeps the MJCF's value.

    The object ranges default to gym-aloha's ``sample_box_pose`` (world frame, metres).
    """

    object_x: Interval = Field(default_factory=lambda: Interval(lower=0.0, upper=0.2))
    object_y: Interval = Field(default_factory=lambda: Interval(lower=0.4, upper=0.6))
    object_yaw: Interval = Field(default_factory=lambda: Interval(lower=0.0, upper=0.0), description="rad")
    light_scale: Interval | None = Field(default=None, description="multiplies every light's diffuse and the headlight")
    table_rgb: list[Interval] | None = Field(default=None, min_length=3, max_length=3, description="per channel, 0..1")
    object_rgb: list[Interval] | None = Field(default=None, min_length=3, max_length=3, description="per channel, 0..1")
    distractor: bool = Field(default=False, description="a second object (a green cylinder) on the table, away from the cube")

    @field_validator("table_rgb", "object_rgb")
    @classmethod
    def _unit_colours(cls, channels: list[Interval] | None) -> list[Interval] | None:
        if channels is not None and any(c.lower < 0 or c.upper > 1 for c in channels):
            raise ValueError("colour channels must lie in [0, 1]")
        return channels


class MujocoAlohaSim(SimCommon):
    """ALOHA in MuJoCo from gym-aloha's MJCF, driven through the ``mujoco`` API directly."""

    type: Literal["mujoco_aloha"]
    task: Literal["transfer_cube"] = "transfer_cube"
    mjcf: str = Field(
        default="bimanual_viperx_transfer_cube.xml", description="file in gym_aloha/assets, or an absolute path"
    )
    mjcf_arms: dict[str, str] = Field(
        default_factory=lambda: {"left": "vx300s_left", "right": "vx300s_right"},
        description="config arm name -> MJCF body/joint name prefix",
    )
    camera_map: dict[str, str] = Field(description="config camera name -> MJCF camera name")
    shadows: bool = Field(default=False, description="shadow maps cost ~4x render time on llvmpipe")
    multisample: int = Field(default=0, ge=0, description="offscreen MSAA samples (the MJCF asks for 4)")
    success: Literal["lifted", "transferred"] = Field(
        default="lifted",
        description="lifted: the right gripper holds the cube off the table (gym-aloha reward 2); "
        "transferred: the left gripper does (reward 4, gym-aloha's is_success)",
    )
    randomization: AlohaRandomization = Field(default_factory=AlohaRandomization)


class KinematicArmSim(SimCommon):
    """Mock hardware: joints follow commands within the config's velocity and acceleration limits."""

    type: Literal["kinematic_arm"]
    initial_joints: dict[str, list[float]] = Field(default_factory=dict, description="arm name -> joint positions")
    initial_gripper: float = Field(default=1.0, ge=0, le=1, description="normalised, 1 = open")


class KinematicBaseSim(SimCommon):
    type: Literal["kinematic_base"]


SimConfig = Annotated[MujocoAlohaSim | KinematicArmSim | KinematicBaseSim, Field(discriminator="type")]
