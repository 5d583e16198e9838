"""How the executing trajectory is handed over to each new chunk (``RuntimeConfig.blending``).

The blender keeps the chunks that still contribute ("layers", oldest first) and answers
"what is the plan at time t". Sampling is pure, so the controller can look ahead for the
committed actions; ``prune`` drops layers that can no longer contribute.

- ``latest``: only the newest chunk.
- ``crossfade``: the newest chunk fades in over ``crossfade_steps`` control periods from its
  arrival with cosine weights; what it fades from is the plan as it was (itself possibly a
  fade). If the plan had run out, the fade starts from the current command instead.
- ``temporal_ensemble``: ACT's temporal ensembling; every chunk that has a prediction for t
  is averaged with weights exp(-decay * i), i = 0 for the oldest.

At most ``max_chunks`` layers are kept: a chunk beyond that retires the oldest, so the work
of a period (a sample per layer, and ``committed_steps`` more for the committed actions) is
bounded however fast chunks arrive. Retiring a layer that still had weight changes the
target; the safety stages after the blender limit that change like any other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.runtime import Blending
from qwen_vla_ros.control.interpolation import Trajectory, cosine_weight


@dataclass(frozen=True)
class Layer:
    trajectory: Trajectory
    arrival_ns: int


class Blender:
    def __init__(self, settings: Blending, period_s: float):
        self.settings = settings
        self.fade_ns = round(settings.crossfade_steps * period_s * NS_PER_S)
        self.layers: list[Layer] = []

    @property
    def end_ns(self) -> int:
        """When the plan runs out: the newest chunk's end, or the last end of any chunk when ensembling."""
        if not self.layers:
            return -1
        if self.settings.method == "temporal_ensemble":
            return max(layer.trajectory.end_ns for layer in self.layers)
        return self.layers[-1].trajectory.end_ns

    def exhausted(self, t_ns: int) -> bool:
        """No chunk has anything left to say at ``t_ns``."""
        return t_ns > self.end_ns

    def add(self, trajectory: Trajectory, now_ns: int, current: np.ndarray) -> None:
        """Hand over to ``trajectory``; ``current`` is the command now, the fade's origin if the plan ran out."""
        method = self.settings.method
        if method == "latest":
            self.layers = []
        elif method == "crossfade" and self.exhausted(now_ns):
            self.layers = [Layer(Trajectory.constant(current, now_ns), now_ns)]
        self.layers.append(Layer(trajectory, now_ns))
        del self.layers[: -self.settings.max_chunks]

    def clear(self) -> None:
        self.layers = []

    def _fade(self, layer: Layer, t_ns: int) -> float:
        return cosine_weight((t_ns - layer.arrival_ns) / self.fade_ns) if self.fade_ns > 0 else 1.0

    def sample(self, t_ns: int) -> np.ndarray | None:
        """The plan at ``t_ns``, or None when it has run out."""
        if self.exhausted(t_ns):
            return None
        method = self.settings.method
        if method == "temporal_ensemble":
            live = [layer.trajectory.sample(t_ns) for layer in self.layers if layer.trajectory.end_ns >= t_ns]
            weights = np.exp(-self.settings.ensemble_decay * np.arange(len(live)))
            return np.tensordot(weights / weights.sum(), np.stack(live), axes=1)
        value = self.layers[0].trajectory.sample(t_ns)
        for layer in self.layers[1:]:
            weight = self._fade(layer, t_ns)
            value = (1.0 - weight) * value + weight * layer.trajectory.sample(t_ns)
        return value

    def prune(self, now_ns: int) -> None:
        """Drop layers that cannot contribute at ``now_ns`` or later."""
        method = self.settings.method
        if method == "temporal_ensemble":
            self.layers = [layer for layer in self.layers if layer.trajectory.end_ns >= now_ns]
        elif method == "crossfade":
            faded_in = [i for i, layer in enumerate(self.layers) if self._fade(layer, now_ns) >= 1.0]
            if faded_in:
                del self.layers[: faded_in[-1]]
