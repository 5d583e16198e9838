"""Denormal floats flushed to zero while the model computes, and only then.

The gated delta rule's recurrent state decays by ``exp(g)`` every token and much of it
underflows into denormal floats, which x86 arithmetic handles many times slower (the float32
backbone step took about 97 ms with them against 65 ms without, docs/benchmarks.md).

The flag lives in each thread's MXCSR and is shared by everything that thread computes,
numpy included, so it is set around the policy's own work and restored afterwards rather
than left on for the process. Threads started inside the scope keep it: torch's OpenMP
team of the calling thread, which only runs torch kernels. onnxruntime flushes its pool
threads itself (``session.set_denormal_as_zero``); this scope covers the calling thread's
share of its work.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

LOG = logging.getLogger(__name__)
_DENORMAL_BITS = 0x000A_E398  # a float32 with zero exponent bits, about 1e-39


def flushing() -> bool:
    """Whether this thread flushes denormals now (torch has no getter, so it is measured)."""
    denormal = torch.tensor([_DENORMAL_BITS], dtype=torch.int32).view(torch.float32)
    return bool((denormal * 1.0).view(torch.int32).item() == 0)


@contextmanager
def flushed_denormals(enabled: bool) -> Iterator[None]:
    if not enabled or flushing():
        yield
        return
    if not torch.set_flush_denormal(True):
        LOG.warning("this CPU cannot flush denormal floats to zero; the recurrent state's may slow inference")
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
