"""The action chunk: the one value that crosses from policy to controller.

Plain numpy, no ROS, so the model, the control core and the tests share one definition.
Action k of a chunk is due at ``stamp_ns + k * dt`` (the stamp is the capture time of the
observation it was computed from).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ActionChunk:
    actions: np.ndarray  # H x D, robot units, the embodiment's channels in order
    channel_names: tuple[str, ...]
    dt: float  # seconds between consecutive actions
    stamp_ns: int | None = None  # observation capture time; None until a node stamps it
    metadata: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def due_ns(self, index: int) -> int:
        """ROS time at which action ``index`` is due."""
        if self.stamp_ns is None:
            raise ValueError("chunk has no stamp yet")
        return self.stamp_ns + round(index * self.dt * NS_PER_S)

    def stamped(self, stamp_ns: int) -> ActionChunk:
        return ActionChunk(self.actions, self.channel_names, self.dt, stamp_ns, dict(self.metadata))
