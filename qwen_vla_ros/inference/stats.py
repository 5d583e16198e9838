"""Small running statistics the policy node reports and schedules with."""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S


class Window:
    """The last ``size`` values, with percentiles (None while empty)."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(np.fromiter(self._values, float), q)) if self._values else None


class RateMeter:
    """Events per second over the last ``span_s`` seconds."""

    def __init__(self, span_s: float = 10.0) -> None:
        self.span_ns = round(span_s * NS_PER_S)
        self._stamps: deque[int] = deque()

    def add(self, now_ns: int) -> None:
        self._stamps.append(now_ns)

    def rate(self, now_ns: int) -> float:
        while self._stamps and now_ns - self._stamps[0] > self.span_ns:
            self._stamps.popleft()
        return len(self._stamps) * NS_PER_S / self.span_ns


def steps_covering(seconds: float, dt: float) -> int:
    """Whole actions of ``dt`` that start within ``seconds`` (exact multiples are not rounded up)."""
    return max(0, math.ceil(seconds / dt - 1e-9))
