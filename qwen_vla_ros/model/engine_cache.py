"""TensorRT engine decisions as pure functions: precision, optimisation profiles, cache keys, reuse.

Building an engine takes minutes for the full model, and an engine only runs on the GPU
model and TensorRT version that built it, so engines are cached on disk under a key made of
everything they depend on: the checkpoint fingerprint, the export (opset, exporter, graph
shapes), the GPU name and compute capability, the TensorRT version, the precision and the
optimisation-profile ranges. A cached engine is reused only when its recorded key matches
exactly; anything else is rebuilt and the reason logged. One timing cache per GPU and
TensorRT version is shared by all builds, so a rebuild (say, a new checkpoint) skips most
kernel timing.

None of this imports TensorRT, so it is tested on machines without it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.onnx_manifest import ExportManifest, StageModel, input_shapes

OPT_PREFIX_TOKENS = 192  # profile optimum: a typical system + embodiment + instruction prefix
Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | fp16 | bf16 | fp8
    note: str = ""  # why it differs from the request, if it does


def resolve_precision(requested: str, compute_capability: tuple[int, int], has_fp8_quantization: bool) -> Precision:
    """The precision to build with. BF16 needs Ampere (8.0) or newer, FP8 Ada/Hopper (8.9) and an
    export carrying FP8 quantize/dequantize nodes (TensorRT does not calibrate FP8 itself)."""
    if requested not in ("fp32", "fp16", "bf16", "fp8"):
        raise InvalidArgumentError(f"precision must be fp32, fp16, bf16 or fp8, got {requested!r}")
    fallback = "bf16" if compute_capability >= (8, 0) else "fp16"
    if requested == "fp8":
        if compute_capability < (8, 9):
            return Precision(fallback, f"fp8 needs compute capability 8.9+, this GPU has {compute_capability}")
        if not has_fp8_quantization:
            return Precision(fallback, "fp8 needs an export with FP8 quantize/dequantize nodes (e.g. from NVIDIA "
                                       "ModelOpt); this export has none")
    if requested == "bf16" and compute_capability < (8, 0):
        return Precision("fp16", f"bf16 needs compute capability 8.0+, this GPU has {compute_capability}")
    return Precision(requested)


def check_profile_limits(manifest: ExportManifest, max_cameras: int, max_prefix_tokens: int) -> None:
    if not 1 <= max_cameras <= manifest.max_cameras:
        raise InvalidArgumentError(
            f"tensorrt.max_cameras {max_cameras} must lie in [1, {manifest.max_cameras}] (the export's limit; "
            f"re-export with --max-cameras to raise it)"
        )
    if max_prefix_tokens < 1:
        raise InvalidArgumentError(f"tensorrt.max_prefix_tokens must be positive, got {max_prefix_tokens}")


def profile_shapes(stage: StageModel, max_cameras: int, max_prefix_tokens: int) -> ProfileShapes:
    """Min/opt/max shape of every input: cameras from the stage's minimum (1, or 0 for the head,
    which also serves camera-less embodiments) to ``max_cameras``, optimised for all cameras;
    prefix from 1 to ``max_prefix_tokens``, optimised for a typical prompt."""
    opt_prefix = min(OPT_PREFIX_TOKENS, max_prefix_tokens)
    low = input_shapes(stage, stage.min_cameras, 1)
    opt = input_shapes(stage, max_cameras, opt_prefix)
    high = input_shapes(stage, max_cameras, max_prefix_tokens)
    return {name: (low[name], opt[name], high[name]) for name in low}


def shapes_fit(profile: ProfileShapes, shapes: dict[str, Shape]) -> list[str]:
    """Inputs whose shape lies outside the profile (empty when the engine can run them)."""
    outside = []
    for name, shape in shapes.items():
        low, _, high = profile[name]
        if len(shape) != len(low) or any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            outside.append(f"{name} {shape} not within {low}..{high}")
    return outside


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; equal keys mean a cached engine can be reused."""

    checkpoint_fingerprint: str
    export_digest: str
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: str
    max_cameras: int
    max_prefix_tokens: int

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        return data

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


def export_digest(manifest: ExportManifest) -> str:
    """Changes when the graphs could: another opset, exporter version, export limits or shapes."""
    return hashlib.sha256(json.dumps(manifest.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def engine_dir(cache_root: Path, key: EngineKey) -> Path:
    """<cache>/<checkpoint>/<gpu>-sm<cc>-trt<version>-<precision>-<digest>: readable and unique."""
    major, minor = key.compute_capability
    name = f"{_slug(key.gpu_name)}-sm{major}{minor}-trt{key.tensorrt_version}-{key.precision}-{key.digest[:12]}"
    return cache_root / key.checkpoint_fingerprint[:16] / name


def timing_cache_path(cache_root: Path, key: EngineKey) -> Path:
    """Shared by every build on this GPU model and TensorRT version."""
    major, minor = key.compute_capability
    return cache_root / f"timing-{_slug(key.gpu_name)}-sm{major}{minor}-trt{key.tensorrt_version}.cache"


@dataclass(frozen=True)
class Reuse:
    reuse: bool
    reason: str


def reuse_decision(engine_path: Path, key: EngineKey, stage: str) -> Reuse:
    """Reuse ``engine_path`` only if it exists and its sidecar ``.json`` records this exact key."""
    meta_path = engine_path.with_suffix(".json")
    if not engine_path.is_file() or engine_path.stat().st_size == 0:
        return Reuse(False, f"no cached {stage} engine at {engine_path}")
    try:
        recorded = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return Reuse(False, f"cached {stage} engine has no readable metadata ({exc})")
    if recorded.get("stage") != stage or recorded.get("key") != key.as_dict():
        differs = sorted(k for k, v in key.as_dict().items() if recorded.get("key", {}).get(k) != v)
        return Reuse(False, f"cached {stage} engine was built for other {', '.join(differs) or 'stage'}")
    return Reuse(True, f"reusing cached {stage} engine {engine_path}")


def write_engine(engine_path: Path, plan: bytes, key: EngineKey, stage: str, profile: ProfileShapes) -> None:
    """Engine bytes, then the metadata that marks them valid (a crash in between leaves no valid entry)."""
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.with_suffix(".json").unlink(missing_ok=True)
    partial = engine_path.with_suffix(".partial")
    partial.write_bytes(plan)
    partial.replace(engine_path)
    meta = {"stage": stage, "key": key.as_dict(),
            "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()}}
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
