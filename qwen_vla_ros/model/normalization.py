"""Per-embodiment normalisation and the padded model space, in numpy.

The model sees every robot through one padded vector: normalised channels placed at the
embodiment's mask indices, zeros elsewhere. Normalising in float64 keeps the round trip
exact to float rounding, so committed actions fed back for real-time chunking come out
where they went in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.config.spaces import MeanStd, Quantiles


@dataclass(frozen=True)
class ChannelNormalizer:
    """Affine map robot units <-> normalised units: ``normalized = (x - offset) / scale``.

    mean/std uses offset = mean, scale = std; quantile maps q01..q99 to -1..1.
    """

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(cls, stats: MeanStd | Quantiles) -> ChannelNormalizer:
        if isinstance(stats, MeanStd):
            return cls(np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64))
        low, high = np.asarray(stats.q01, np.float64), np.asarray(stats.q99, np.float64)
        return cls((high + low) / 2.0, (high - low) / 2.0)

    @property
    def size(self) -> int:
        return int(self.offset.shape[0])

    def normalize(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, np.float64) - self.offset) / self.scale

    def unnormalize(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64) * self.scale + self.offset


def to_padded(values: np.ndarray, mask: list[int], dim: int) -> np.ndarray:
    """Place channels (..., len(mask)) at their mask indices of a zero (..., dim) array."""
    values = np.asarray(values)
    padded = np.zeros((*values.shape[:-1], dim), dtype=np.float32)
    padded[..., mask] = values
    return padded


def from_padded(padded: np.ndarray, mask: list[int]) -> np.ndarray:
    return np.asarray(padded)[..., mask]


def mask_vector(mask: list[int], dim: int) -> np.ndarray:
    """1 on the embodiment's channels, 0 on padding."""
    vector = np.zeros(dim, dtype=np.float32)
    vector[mask] = 1.0
    return vector


@dataclass(frozen=True)
class RelativeChannels:
    """Action channels the head predicts as offsets from the observed state of the same channel.

    A joint that barely moves over a chunk is, in absolute terms, a narrow spike far from the
    noise the flow starts from, and a head that has not fitted it well lands a few hundredths of
    a radian off, which is worse than holding still (docs/evaluation.md, open loop). As an
    offset from where the joint is, the same chunk starts at zero and the head learns only the
    motion (the ALOHA recipe of pi0: relative joints, absolute grippers). Offsets live in model
    space only: chunks, committed actions and the controller stay in absolute robot units.
    """

    action_index: np.ndarray  # (k,) int: positions among the action channels
    state_index: np.ndarray  # (k,) int: the same channels' positions among the state channels

    @classmethod
    def of(cls, names: list[str], action_channels: list[str], state_channels: list[str]) -> RelativeChannels:
        return cls(np.array([action_channels.index(n) for n in names], dtype=np.int64),
                   np.array([state_channels.index(n) for n in names], dtype=np.int64))

    def offset(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Absolute actions (..., T, channels) as the head sees them, for the state (..., state channels)."""
        return self._shifted(actions, state, -1.0)

    def restore(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The head's actions (..., T, channels) back in absolute robot units."""
        return self._shifted(actions, state, 1.0)

    def _shifted(self, actions: np.ndarray, state: np.ndarray, sign: float) -> np.ndarray:
        out = np.array(actions, dtype=np.float64)
        out[..., self.action_index] += sign * np.expand_dims(np.asarray(state, np.float64)[..., self.state_index], -2)
        return out
