"""Load a checkpoint directory into a :class:`Policy` (torch backend).

transformers' ``from_pretrained`` random-initialises weights it cannot find and only logs a
warning; a policy running on random weights would look healthy, so missing or mismatched
tensors are errors here, naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qwen_vla_ros.model.action_head import ActionHead
from qwen_vla_ros.model.checkpoint import CheckpointError, CheckpointFiles, Manifest, read_checkpoint
from qwen_vla_ros.model.images import PatchSpec
from qwen_vla_ros.model.policy import Policy

BACKENDS = ("torch",)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float32 on CPU, bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {list(DTYPES)} or None, got {dtype!r}")


def patch_spec(manifest: Manifest, vision_config: dict[str, Any], preprocessor_config: dict[str, Any]) -> PatchSpec:
    """Resolution from the manifest, patch geometry from the vision tower, statistics from the processor."""
    return PatchSpec(
        height=manifest.vision.image_height,
        width=manifest.vision.image_width,
        patch_size=vision_config["patch_size"],
        temporal_patch_size=vision_config["temporal_patch_size"],
        merge_size=vision_config["spatial_merge_size"],
        mean=tuple(preprocessor_config["image_mean"]),
        std=tuple(preprocessor_config["image_std"]),
    )


def _summarize(problems: dict[str, list[str]]) -> str:
    """'label: [first five names] ...' for every non-empty list."""
    return "; ".join(
        f"{label}: {names[:5]}{' ...' if len(names) > 5 else ''}" for label, names in problems.items() if names
    )


def _load_backbone(files: CheckpointFiles, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen3_5ForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a node's log is no place for progress bars

    try:
        model, info = Qwen3_5ForConditionalGeneration.from_pretrained(
            files.backbone_dir, dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(files.backbone_dir, f"transformers cannot load the backbone: {exc}") from exc
    problems = {key: sorted(info.get(key) or []) for key in ("missing_keys", "mismatched_keys")}
    if any(problems.values()):
        summary = _summarize(problems)
        raise CheckpointError(
            files.backbone_dir / "model.safetensors", f"backbone weights do not match config.json ({summary})"
        )
    return model.to(device).eval().requires_grad_(False)


def _load_head(files: CheckpointFiles, device: torch.device, dtype: torch.dtype) -> ActionHead:
    path = files.head_weights
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(path, f"cannot read action head weights: {exc}") from exc
    head = ActionHead(files.manifest.action_head)
    expected = head.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        summary = _summarize({"missing": missing, "unexpected": unexpected, "wrong shape": wrong})
        raise CheckpointError(path, f"weights do not match action_head in qwen_vla.json ({summary})")
    head.load_state_dict(tensors)
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_tokenizer(files: CheckpointFiles) -> object:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(files.backbone_dir)
    except (OSError, ValueError) as exc:
        raise CheckpointError(files.backbone_dir / "tokenizer.json", f"cannot load the tokenizer: {exc}") from exc


def load_policy(
    path: str | Path, backend: str = "torch", device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> Policy:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available; choose one of {list(BACKENDS)}")
    files = read_checkpoint(path)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    return Policy(
        manifest=files.manifest,
        backbone_model=_load_backbone(files, resolved_device, resolved_dtype),
        tokenizer=_load_tokenizer(files),
        patch_spec=patch_spec(files.manifest, files.backbone_config["vision_config"], files.preprocessor_config),
        head=_load_head(files, resolved_device, resolved_dtype),
        device=resolved_device,
        dtype=resolved_dtype,
        source=str(files.root),
    )
