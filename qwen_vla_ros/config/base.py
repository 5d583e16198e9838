"""Shared ground of every config model: strictness, the rate ceiling, limits.

Models forbid unknown keys so a typo in YAML fails loudly instead of silently using a
default, and no float may be infinite or NaN (see :class:`StrictModel`).
"""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_RATE_HZ = 10_000.0
"""Highest rate any config may ask for (servo, camera, replanning, heartbeat): a value above it
is a typo (a period written as a rate) and would starve the host, so it is refused."""


class StrictModel(BaseModel):
    """Base for all config models: unknown keys are errors, values are validated on assignment.

    No float anywhere may be ``.inf`` or ``.nan``: an infinite limit, rate, timeout or
    tolerance switches its check off without saying so, and NaN compares false both ways.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def require_unique(names: list[str], what: str) -> list[str]:
    """Raise naming the duplicates, for validators of name lists."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique, duplicated: {duplicates}")
    return names


class Limits(StrictModel):
    """Bounds on a value and its first two time derivatives.

    For a joint these are position (rad or m), velocity and acceleration. For a channel that
    is itself a velocity (a base's v or omega) ``lower``/``upper`` bound the velocity,
    ``velocity`` bounds its rate of change (acceleration) and ``acceleration`` its jerk.
    A derivative bound left empty is not enforced in that space. Only action channels whose
    values are not commanded as they are may leave them empty (end-effector deltas: their
    rates are enforced after IK, on the arm's joints); joint-space command channels (a
    driver joint, a gripper motor) must set both, see :func:`require_rate_limits`.
    """

    lower: float
    upper: float
    velocity: float | None = Field(default=None, gt=0)
    acceleration: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"lower ({self.lower}) and upper ({self.upper}) must be finite")
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self

    def contains(self, other: Limits) -> bool:
        """True when ``other`` lies within these bounds in position, velocity and acceleration."""
        inside = self.lower <= other.lower and other.upper <= self.upper
        for mine, theirs in ((self.velocity, other.velocity), (self.acceleration, other.acceleration)):
            if mine is not None and (theirs is None or theirs > mine):
                inside = False
        return inside


def require_rate_limits(limits: Limits) -> Limits:
    """A joint-space command channel without a velocity or acceleration bound would be sent
    steps of any size: the controller's rate limiter has nothing to enforce."""
    missing = [name for name in ("velocity", "acceleration") if getattr(limits, name) is None]
    if missing:
        raise ValueError(
            f"a joint-space command channel needs finite {' and '.join(missing)} limits "
            "(only end-effector delta action channels may leave them empty)"
        )
    return limits
