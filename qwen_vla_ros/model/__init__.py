"""The Qwen-VLA policy. Importing this package must stay cheap: torch loads inside load_policy.

Public API::

    policy = load_policy(path, backend="torch", device="cpu", dtype=None)  # or "onnxruntime", "tensorrt"
    policy.set_task(embodiment, instruction)
    chunk = policy.infer(images, state, committed=None, delay_steps=0, seed=None)
    features = policy.encode(images, state)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen_vla_ros.model.policy import Policy

__all__ = ["Policy", "load_policy"]


def load_policy(
    path: str | Path, backend: str = "torch", device: Any = "cpu", dtype: Any = None, options: Any = None
) -> Policy:
    """Load a checkpoint directory (see docs/model.md for the layout) into a Policy.

    ``backend``: ``torch``, ``onnxruntime`` or ``tensorrt``; ``options``: a
    ``loading.BackendOptions`` (CUDA graphs, onnxruntime and tensorrt settings).
    """
    from qwen_vla_ros.model.loading import load_policy as _load

    return _load(path, backend=backend, device=device, dtype=dtype, options=options)


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from qwen_vla_ros.model.policy import Policy

        return Policy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
