"""Per-stage wall-clock timing, switched on by the benchmark and off (free) in deployment."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np


class NullTimer:
    """The default: stages cost one no-op context manager."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


class StageTimer(NullTimer):
    """Records milliseconds per named stage. ``synchronize`` (e.g. torch.cuda.synchronize) makes
    asynchronous device work land inside the stage it belongs to."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._synchronize = synchronize or (lambda: None)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.samples[name].append((time.perf_counter() - start) * 1000.0)

    def clear(self) -> None:
        self.samples.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """p50/p99/mean milliseconds and the sample count of every stage."""
        return {
            name: {
                "p50_ms": float(np.percentile(values, 50)),
                "p99_ms": float(np.percentile(values, 99)),
                "mean_ms": float(np.mean(values)),
                "count": len(values),
            }
            for name, values in self.samples.items()
        }
