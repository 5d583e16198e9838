"""A dedicated CUDA stream for engines outside torch (ONNX Runtime, TensorRT), ordered with torch's.

ONNX Runtime treats stream handle 0 (torch's default stream) as "no stream", so external
engines get a stream of their own. Ordering is by stream waits, never host syncs: the engine
stream waits for the work that produced its inputs, and torch's current stream waits for the
engine before anything reads its outputs or reuses its inputs' memory.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ExternalStream:
    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def handle(self) -> int:
        """The raw cudaStream_t to hand to the engine (0 on CPU)."""
        return 0 if self.stream is None else self.stream.cuda_stream

    @contextmanager
    def ordered(self) -> Iterator[int]:
        if self.stream is None:
            yield 0
            return
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        try:
            yield self.stream.cuda_stream
        finally:
            current.wait_stream(self.stream)
