"""Load a checkpoint directory into a :class:`Policy`, with the backend that runs its stages.

transformers' ``from_pretrained`` random-initialises weights it cannot find and only logs a
warning; a policy running on random weights would look healthy, so missing, unexpected or mismatched
tensors are errors here, naming the file.

Every backend loads the torch modules (the prefix runs in torch once per task) and then
replaces ``Policy.stages``. ``BACKENDS`` maps each name to the function that does so:

- ``torch``: the modules themselves; on CUDA, CUDA graphs of the per-step backbone and the
  K-step sampler unless ``cuda_graphs=False``;
- ``onnxruntime``: the exported stage graphs (exported on demand into the cache);
- ``tensorrt``: engines built from those graphs, cached per checkpoint, GPU and TensorRT.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.config.runtime import OnnxRuntimeSettings, RuntimeConfig, TensorRTSettings
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model import export as onnx_export
from qwen_vla_ros.model.action_head import ActionHead
from qwen_vla_ros.model.checkpoint import CheckpointError, CheckpointFiles, Manifest, read_checkpoint
from qwen_vla_ros.model.denormals import flushed_denormals
from qwen_vla_ros.model.fingerprint import checkpoint_fingerprint
from qwen_vla_ros.model.images import PatchSpec
from qwen_vla_ros.model.onnx_manifest import EXPORT_MANIFEST, ExportManifest
from qwen_vla_ros.model.policy import Policy
from qwen_vla_ros.model.stages import Stages

LOG = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BackendOptions:
    """The runtime config's backend sections (see ``RuntimeConfig``)."""

    cuda_graphs: bool = True
    flush_denormals: bool = True
    onnxruntime: OnnxRuntimeSettings = field(default_factory=OnnxRuntimeSettings)
    tensorrt: TensorRTSettings = field(default_factory=TensorRTSettings)


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} requested but CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device must be cpu or cuda[:N], got {device!r}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float32 on CPU, bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidArgumentError(f"dtype must be one of {list(DTYPES)} or None, got {dtype!r}")


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
    # Unexpected tensors too: a checkpoint of a deeper model under a shallower config.json would
    # otherwise load its first layers and run, silently not the model that was trained.
    problems = {key: sorted(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
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


def _exported(policy: Policy, files: CheckpointFiles | None, model_dir: str | None) -> tuple[Path, ExportManifest]:
    """The ONNX export of this checkpoint: ``model_dir`` as given, or the cache, exporting on demand."""
    if files is None:
        raise InvalidArgumentError("exported backends need a checkpoint directory (its fingerprint keys the export)")
    fingerprint = checkpoint_fingerprint(files.root)
    if model_dir is not None:
        folder = Path(model_dir).expanduser()
        return folder, onnx_export.matching_export(folder, fingerprint)
    folder = onnx_export.default_export_dir(fingerprint)
    if (folder / EXPORT_MANIFEST).is_file():
        try:
            return folder, onnx_export.matching_export(folder, fingerprint)
        except ValueError as exc:
            LOG.warning("cached ONNX export is unusable (%s); exporting again", exc)
    LOG.info("exporting %s to ONNX in %s (once per checkpoint)", files.root, folder)
    if policy.device.type == "cpu" and policy.dtype == torch.float32:
        onnx_export.export_policy(policy, folder, fingerprint)
    else:
        export_checkpoint(files.root, folder)
    return folder, onnx_export.matching_export(folder, fingerprint)


def _torch_stages(policy: Policy, files: CheckpointFiles | None, options: BackendOptions) -> Stages:
    if policy.device.type == "cuda" and options.cuda_graphs:
        from qwen_vla_ros.model.cuda_graphs import CudaGraphStages

        return CudaGraphStages(policy)
    return policy.stages


def _onnxruntime_stages(policy: Policy, files: CheckpointFiles | None, options: BackendOptions) -> Stages:
    from qwen_vla_ros.model.ort_backend import OnnxRuntimeStages

    folder, manifest = _exported(policy, files, options.onnxruntime.model_dir)
    return OnnxRuntimeStages(folder, manifest, options.onnxruntime, policy.device, options.flush_denormals)


def _tensorrt_stages(policy: Policy, files: CheckpointFiles | None, options: BackendOptions) -> Stages:
    from qwen_vla_ros.model.tensorrt_backend import TensorRTStages, require_tensorrt

    require_tensorrt()  # before any export work
    folder, manifest = _exported(policy, files, options.tensorrt.onnx_dir)
    return TensorRTStages(folder, manifest, options.tensorrt, policy.device)


# name -> (policy, its checkpoint files or None when built in memory, options) -> the stages that run it
BACKENDS: dict[str, Callable[[Policy, CheckpointFiles | None, BackendOptions], Stages]] = {
    "torch": _torch_stages,
    "onnxruntime": _onnxruntime_stages,
    "tensorrt": _tensorrt_stages,
}


def _backend_dtype(backend: str, dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Exported graphs are float32 (TensorRT lowers precision itself), so the torch side is too."""
    if backend == "torch":
        return resolve_dtype(dtype, device)
    if dtype is not None and resolve_dtype(dtype, device) != torch.float32:
        raise InvalidArgumentError(
            f"backend {backend!r} runs the float32 ONNX export, so dtype must be None or float32, got {dtype!r}; "
            "TensorRT's precision is tensorrt.precision"
        )
    return torch.float32


def load_policy(
    path: str | Path,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    options: BackendOptions | None = None,
) -> Policy:
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend {backend!r} is not available; choose one of {list(BACKENDS)}")
    if backend == "tensorrt" and torch.device(device).type != "cuda":
        raise InvalidArgumentError(f"backend 'tensorrt' needs a cuda device, got {device!r}")
    files = read_checkpoint(path)
    resolved_device = resolve_device(device)
    options = options or BackendOptions()
    flush = options.flush_denormals and resolved_device.type == "cpu"
    with flushed_denormals(flush):  # torch's worker threads started while loading inherit it
        policy = _load(files, backend, resolved_device, _backend_dtype(backend, dtype, resolved_device), options)
    policy.flush_denormals = flush
    return policy


def _load(files: CheckpointFiles, backend: str, device: torch.device, dtype: torch.dtype,
          options: BackendOptions) -> Policy:
    policy = Policy(
        manifest=files.manifest,
        backbone_model=_load_backbone(files, device, dtype),
        tokenizer=_load_tokenizer(files),
        patch_spec=patch_spec(files.manifest, files.backbone_config["vision_config"], files.preprocessor_config),
        head=_load_head(files, device, dtype),
        device=device,
        dtype=dtype,
        source=str(files.root),
    )
    policy.stages = BACKENDS[backend](policy, files, options)
    LOG.info("policy %s: %s stages on %s, %s", files.root, policy.stages.name, device, dtype)
    return policy


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    max_cameras: int = onnx_export.DEFAULT_MAX_CAMERAS,
    opset: int = onnx_export.DEFAULT_OPSET,
    progress: Callable[[str], None] = LOG.info,
) -> Path:
    """Load a checkpoint as float32 on CPU and export it; ``out`` defaults to the export cache."""
    fingerprint = checkpoint_fingerprint(checkpoint)
    target = Path(out).expanduser() if out is not None else onnx_export.default_export_dir(fingerprint)
    policy = load_policy(checkpoint, backend="torch", device="cpu", dtype="float32")
    onnx_export.export_policy(policy, target, fingerprint, max_cameras=max_cameras, opset=opset, progress=progress)
    return target


def load_policy_from_config(config: RuntimeConfig) -> Policy:
    """The policy a runtime config describes: checkpoint, backend, device, dtype, steps, guidance."""
    if config.checkpoint is None:
        raise ConfigError("runtime config", ["checkpoint: the runtime config names no checkpoint"])
    policy = load_policy(
        config.checkpoint,
        backend=config.backend,
        device=config.device,
        dtype=config.dtype,
        options=BackendOptions(config.cuda_graphs, config.flush_denormals, config.onnxruntime, config.tensorrt),
    )
    if config.denoising_steps is not None:
        policy.num_steps = config.denoising_steps
    policy.max_guidance_weight = config.rtc.max_guidance_weight
    policy.guidance_capped_at_steps = config.rtc.guidance_limit == "min(beta,K)"
    return policy
