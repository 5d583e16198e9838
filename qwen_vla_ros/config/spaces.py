"""What the model sees and says: action channels, proprioceptive state, normalisation.

The action and state spaces are ordered channels with a mask into the model's padded
vector; normalisation statistics map them to and from the model's units.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from qwen_vla_ros.config.base import Limits, StrictModel, require_unique

ChannelUnit = Literal["rad", "m", "normalized", "m/s", "rad/s"]


class ActionChannel(StrictModel):
    name: str = Field(min_length=1)
    unit: ChannelUnit
    limits: Limits


class ActionSpace(StrictModel):
    """The embodiment's ordered action channels and where they sit in the padded model space."""

    channels: list[ActionChannel] = Field(min_length=1)
    padded_dim: int = Field(default=32, gt=0)
    mask: list[int] = Field(description="index in the padded action vector of each channel, in channel order")

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[ActionChannel]) -> list[ActionChannel]:
        require_unique([c.name for c in channels], "action channel names")
        return channels

    @field_validator("mask")
    @classmethod
    def _mask_matches(cls, mask: list[int], info: ValidationInfo) -> list[int]:
        return _validate_mask(mask, info, "action channels")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]


class JointSource(StrictModel):
    kind: Literal["joint"] = "joint"
    arm: str
    joint: str


class GripperSource(StrictModel):
    """Gripper opening normalised 0 (closed) .. 1 (open) from the arm's gripper constants."""

    kind: Literal["gripper"] = "gripper"
    arm: str


class EndEffectorSource(StrictModel):
    """A component of the end-effector pose from forward kinematics of the arm's joint state."""

    kind: Literal["ee_pose"] = "ee_pose"
    arm: str
    component: Literal["x", "y", "z", "roll", "pitch", "yaw"]


class OdometrySource(StrictModel):
    kind: Literal["odom"] = "odom"
    field: Literal["linear_x", "angular_z"]


StateSource = Annotated[
    JointSource | GripperSource | EndEffectorSource | OdometrySource, Field(discriminator="kind")
]


class StateChannel(StrictModel):
    name: str = Field(min_length=1)
    unit: ChannelUnit
    source: StateSource


class StateSpace(StrictModel):
    """Proprioceptive state fed to the model, built from joint states and odometry."""

    channels: list[StateChannel] = Field(min_length=1)
    padded_dim: int = Field(default=32, gt=0)
    mask: list[int]

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[StateChannel]) -> list[StateChannel]:
        require_unique([c.name for c in channels], "state channel names")
        return channels

    @field_validator("mask")
    @classmethod
    def _mask_matches(cls, mask: list[int], info: ValidationInfo) -> list[int]:
        return _validate_mask(mask, info, "state channels")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]


def _validate_mask(mask: list[int], info: ValidationInfo, what: str) -> list[int]:
    channels = info.data.get("channels")
    padded_dim = info.data.get("padded_dim")
    if channels is not None and len(mask) != len(channels):
        raise ValueError(f"mask has {len(mask)} entries but there are {len(channels)} {what}")
    if padded_dim is not None:
        outside = [i for i in mask if not 0 <= i < padded_dim]
        if outside:
            raise ValueError(f"mask indices {outside} lie outside the padded space [0, {padded_dim})")
    require_unique([str(i) for i in mask], "mask indices")
    return mask


class MeanStd(StrictModel):
    mean: list[float]
    std: list[float]

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float]) -> list[float]:
        bad = [s for s in std if not s > 0]
        if bad:
            raise ValueError(f"std must be > 0, got {bad}")
        return std

    @model_validator(mode="after")
    def _same_length(self) -> MeanStd:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self

    def __len__(self) -> int:
        return len(self.mean)


class Quantiles(StrictModel):
    """Maps q01..q99 to -1..1, the convention of pi0/OpenVLA-style normalisation."""

    q01: list[float]
    q99: list[float]

    @model_validator(mode="after")
    def _ordered(self) -> Quantiles:
        if len(self.q01) != len(self.q99):
            raise ValueError(f"q01 has {len(self.q01)} values but q99 has {len(self.q99)}")
        bad = [i for i, (lo, hi) in enumerate(zip(self.q01, self.q99, strict=True)) if not lo < hi]
        if bad:
            raise ValueError(f"q01 must be below q99, violated at indices {bad}")
        return self

    def __len__(self) -> int:
        return len(self.q01)


class Normalization(StrictModel):
    mode: Literal["mean_std", "quantile"]
    action: MeanStd | Quantiles
    state: MeanStd | Quantiles

    @model_validator(mode="after")
    def _stats_match_mode(self) -> Normalization:
        expected = MeanStd if self.mode == "mean_std" else Quantiles
        for part in ("action", "state"):
            if not isinstance(getattr(self, part), expected):
                keys = "mean/std" if expected is MeanStd else "q01/q99"
                raise ValueError(f"mode {self.mode!r} needs {keys} statistics for {part}")
        return self
