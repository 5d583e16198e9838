"""``qwen-vla-ros export``: one ONNX model per per-step stage, plus ``export.json``.

Stages (inputs are explicit tensors, see :mod:`qwen_vla_ros.model.stages`):

- ``vision``: the vision tower, dynamic in the camera count;
- ``step_backbone``: the per-step trunk on top of the cached prefix state, passed as inputs;
  dynamic in the camera count and the prefix length. Its gated-DeltaNet layers use
  :func:`~qwen_vla_ros.model.delta_rule.scan_gated_delta_rule` (an ONNX ``Scan`` over chunks)
  so the step length really stays dynamic;
- ``context_kv``: the DiT's cross-attention keys and values, once per chunk;
- ``dit_step``: one denoising step with the keys and values as inputs;
- ``dit_guided``: one real-time-chunking step, the velocity and its guidance pull. The
  vector-Jacobian product is traced ahead of time with ``make_fx`` (attention on the math
  kernel, whose backward is plain matmuls and softmax), so no runtime needs autograd.

The prefix stage runs once per task and stays in torch. Graphs are float32; TensorRT lowers
precision when it builds engines. ``torch.onnx.export(..., dynamo=True)`` needs onnxscript.

Each model is checked against torch on the example inputs before the folder is published
(written to a temporary folder, then renamed), so a folder with a manifest is complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.backbone import StepBackbone, Trunk
from qwen_vla_ros.model.delta_rule import scan_gated_delta_rule
from qwen_vla_ros.model.onnx_manifest import (
    EXPORT_MANIFEST,
    ExportManifest,
    OnnxExportError,
    StageModel,
    TensorSpec,
    read_export_manifest,
    write_export_manifest,
)
from qwen_vla_ros.model.prompt import step_ids
from qwen_vla_ros.model.sampler import GuidedVelocity, trace_guided

if TYPE_CHECKING:
    from qwen_vla_ros.model.policy import Policy

LOG = logging.getLogger(__name__)
DEFAULT_MAX_CAMERAS = 8
DEFAULT_OPSET = 20
EXAMPLE_PREFIX_TOKENS = 8
VERIFY_TOLERANCE = 1e-3  # max abs difference to torch on the example inputs


def default_export_dir(fingerprint: str) -> Path:
    """Where exports made on demand are cached: $XDG_CACHE_HOME/qwen_vla_ros/onnx/<fingerprint>."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "qwen_vla_ros" / "onnx" / fingerprint[:16]


@dataclass
class StageExport:
    """One stage to export: the module, example inputs, names, and which dims vary."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    input_dims: list[dict[int, str]]  # per input: axis -> linear form ("49*cameras", "prefix", ...)
    output_dims: list[dict[int, str]]
    dynamic_shapes: tuple[Any, ...]
    min_cameras: int
    reference: nn.Module  # what the exported model must reproduce (eager, autograd for the guided step)


class _ContextKV(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head.context_kv(features)


class _Traced(nn.Module):
    """A ``make_fx`` graph behind the guided step's named signature. Exported bare, its flat
    inputs take names that clash with the traced nodes' own (``t`` is also ``aten.t``)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.traced = graph  # not "graph": that attribute is the fx.Graph of a GraphModule

    def forward(
        self,
        actions: torch.Tensor,
        t: torch.Tensor,
        state: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor,
        *kv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.traced(actions, t, state, mask, target, weights, *kv)


def _dims_spec(dims: dict[int, str], resolve: dict[str, Any]) -> dict[int, Any] | None:
    return {axis: resolve[form] for axis, form in dims.items()} or None


def stage_exports(policy: Policy, max_cameras: int, cameras: int = 2) -> dict[str, StageExport]:
    """Example inputs and dynamic axes of every stage, built from shapes alone (no embodiment)."""
    language_model = policy.backbone_model.model.language_model
    trunk = policy.step_backbone.trunk
    head = policy.head
    per_image = policy.patch_spec.tokens_per_image
    step_per_camera = per_image + 2  # <|vision_start|> pads <|vision_end|>
    generator = torch.Generator().manual_seed(0)
    cameras = min(cameras, max_cameras)

    patches = policy.vision_geometry[0].shape[0]
    pixels = torch.randn(cameras, patches, policy.patch_spec.patch_dim, generator=generator)
    image_tokens = policy.vision(pixels, *policy.vision_geometry)
    ids, image_positions = step_ids(cameras, per_image, policy.vision_tokens)
    prefix = EXAMPLE_PREFIX_TOKENS
    full_ids = torch.cat([torch.arange(prefix), torch.tensor(ids)]).unsqueeze(0)
    positions = torch.arange(full_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    embeds = language_model.embed_tokens(full_ids)
    cos, sin = language_model.rotary_emb(embeds, positions)
    prefix_features, prefix_state = trunk.extend(
        embeds[:, :prefix], cos[:, :prefix], sin[:, :prefix], trunk.empty_state(policy.device, policy.dtype)
    )
    step_inputs = (
        image_tokens, embeds[:, prefix:], torch.tensor(image_positions), cos[:, prefix:], sin[:, prefix:],
        *prefix_state,
    )
    exported_trunk = StepBackbone(Trunk(language_model, trunk.feature_layers, scan_gated_delta_rule)).eval()
    features = torch.cat([prefix_features, exported_trunk(*step_inputs)], dim=1)
    kv = head.context_kv(features)

    settings = policy.manifest.action_head
    actions = torch.randn(1, settings.chunk_length, settings.action_dim, generator=generator)
    t = torch.full((1,), 0.25)
    state = torch.randn(1, settings.state_dim, generator=generator)
    mask = (torch.arange(settings.action_dim) % 2 == 0).float().view(1, 1, -1)
    target = torch.randn(1, settings.chunk_length, settings.action_dim, generator=generator)
    weights = torch.rand(1, settings.chunk_length, 1, generator=generator)
    guided_inputs = (actions, t, state, mask, target, weights, *kv)

    images, step, context = f"{per_image}*cameras", f"{step_per_camera}*cameras", f"prefix+{step_per_camera}*cameras"
    camera_dim = Dim("cameras", min=1, max=max_cameras)
    resolve = {
        "cameras": camera_dim,
        images: per_image * camera_dim,
        step: step_per_camera * camera_dim,
        "prefix": Dim("prefix", min=1),
        context: Dim("context", min=1),
    }
    kv_names = [f"kv_{i}" for i in range(len(kv))]
    kv_dims = [{2: context}] * len(kv)
    state_names = [f"prefix_state_{i}" for i in range(len(prefix_state))]
    state_dims = [
        {2: "prefix"} if kind == "full_attention" else {} for kind in trunk.layer_types for _ in range(2)
    ]

    def make(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], dims: list[dict[int, str]],
             outputs: list[str], output_dims: list[dict[int, str]], named: int, min_cameras: int,
             reference: nn.Module | None = None) -> StageExport:
        """``named``: how many inputs precede the module's ``*varargs`` (whose specs nest in a tuple)."""
        specs = [_dims_spec(d, resolve) for d in dims]
        dynamic = (*specs[:named], tuple(specs[named:])) if named < len(specs) else tuple(specs)
        return StageExport(module, inputs, names, outputs, dims, output_dims, dynamic, min_cameras,
                           reference or module)

    return {
        "vision": make(
            policy.vision, (pixels, *policy.vision_geometry), ["pixel_patches", "positions", "cos", "sin"],
            [{0: "cameras"}, {}, {}, {}], ["image_tokens"], [{0: images}], named=4, min_cameras=1,
        ),
        "step_backbone": make(
            exported_trunk, step_inputs, ["image_tokens", "template", "image_index", "cos", "sin", *state_names],
            [{0: images}, {1: step}, {0: images}, {1: step}, {1: step}, *state_dims],
            ["step_features"], [{1: step}], named=5, min_cameras=1,
        ),
        "context_kv": make(
            _ContextKV(head), (features,), ["features"], [{1: context}], kv_names, kv_dims, named=1, min_cameras=0,
        ),
        "dit_step": make(
            head, (actions, t, state, *kv), ["actions", "t", "state", *kv_names], [{}, {}, {}, *kv_dims],
            ["velocity"], [{}], named=3, min_cameras=0,
        ),
        "dit_guided": make(
            _Traced(trace_guided(head, guided_inputs, symbolic=True)), guided_inputs,
            ["actions", "t", "state", "mask", "target", "weights", *kv_names], [{}, {}, {}, {}, {}, {}, *kv_dims],
            ["velocity", "pull"], [{}, {}], named=6, min_cameras=0, reference=GuidedVelocity(head),
        ),
    }


def _tensor_specs(names: list[str], tensors: Sequence[torch.Tensor], dims: list[dict[int, str]]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=name,
            shape=[dim.get(axis, size) for axis, size in enumerate(tensor.shape)],
            dtype=str(tensor.dtype).removeprefix("torch."),
        )
        for name, tensor, dim in zip(names, tensors, dims, strict=True)
    ]


def _as_tuple(output: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (output,) if isinstance(output, torch.Tensor) else tuple(output)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every optimisation pass and the torchvision ops it skips; keep errors only."""
    names = ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_stage(name: str, stage: StageExport, path: Path, opset: int) -> None:
    import onnx

    with warnings.catch_warnings(), _quiet_exporter():
        warnings.filterwarnings("ignore", message=".*(LeafSpec|axis name|training mode).*")
        program = torch.onnx.export(
            stage.module, stage.inputs, dynamo=True, dynamic_shapes=stage.dynamic_shapes,
            input_names=stage.input_names, output_names=stage.output_names, opset_version=opset,
            verbose=False, report=False,
        )
    if program is None:
        raise OnnxExportError(f"torch.onnx.export returned no program for {name}")
    program.save(str(path))
    graph_inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    if graph_inputs != stage.input_names:
        raise OnnxExportError(f"{name}: exported inputs {graph_inputs} differ from the stage's {stage.input_names}")


def _verify_stage(name: str, stage: StageExport, path: Path, expected: tuple[torch.Tensor, ...]) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {n: t.numpy() for n, t in zip(stage.input_names, stage.inputs, strict=True)})
    difference = max(float(np.max(np.abs(o - e.numpy()))) for o, e in zip(outputs, expected, strict=True))
    if not difference <= VERIFY_TOLERANCE:
        raise OnnxExportError(f"{name}: ONNX Runtime differs from torch by {difference:.3g} on the example inputs")
    return difference


def export_policy(
    policy: Policy,
    out: str | Path,
    fingerprint: str,
    max_cameras: int = DEFAULT_MAX_CAMERAS,
    opset: int = DEFAULT_OPSET,
    progress: Callable[[str], None] = LOG.info,
) -> ExportManifest:
    """Export a float32 CPU policy's stages into ``out`` (replacing an older export there)."""
    if policy.device.type != "cpu" or policy.dtype != torch.float32:
        raise ValueError(f"export needs a float32 CPU policy, got {policy.dtype} on {policy.device}")
    if max_cameras < 1:
        raise InvalidArgumentError(f"max_cameras must be at least 1, got {max_cameras}")
    target = Path(out).expanduser()
    if target.exists() and any(target.iterdir()) and not (target / EXPORT_MANIFEST).is_file():
        raise OnnxExportError(f"{target} exists and is not an export folder; choose a new --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with torch.no_grad():
            exports = stage_exports(policy, max_cameras)
            stages = {}
            for name, stage in exports.items():
                progress(f"exporting {name}")
                expected = _as_tuple(stage.reference(*stage.inputs))
                file = f"{name}.onnx"
                _export_stage(name, stage, staging / file, opset)
                difference = _verify_stage(name, stage, staging / file, expected)
                progress(f"  {file}: ONNX Runtime matches torch within {difference:.1e}")
                stages[name] = StageModel(
                    file=file,
                    inputs=_tensor_specs(stage.input_names, stage.inputs, stage.input_dims),
                    outputs=_tensor_specs(stage.output_names, expected, stage.output_dims),
                    min_cameras=stage.min_cameras,
                )
        manifest = ExportManifest(
            checkpoint=policy.source,
            checkpoint_fingerprint=fingerprint,
            opset=opset,
            torch_version=torch.__version__,
            max_cameras=max_cameras,
            stages=stages,
        )
        write_export_manifest(manifest, staging)
        staging.chmod(0o755)  # mkdtemp makes it private; an export folder may be shared
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def matching_export(folder: str | Path, fingerprint: str) -> ExportManifest:
    """The manifest of ``folder`` if it was exported from the checkpoint with ``fingerprint``."""
    manifest = read_export_manifest(folder)
    if manifest.checkpoint_fingerprint != fingerprint:
        raise OnnxExportError(
            f"{folder} was exported from checkpoint {manifest.checkpoint} (fingerprint "
            f"{manifest.checkpoint_fingerprint[:12]}), not from this one ({fingerprint[:12]}); re-export it"
        )
    return manifest
