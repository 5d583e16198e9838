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
