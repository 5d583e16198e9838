"""``backend="tensorrt"``: engines built from the exported ONNX stages with TensorRT's Python API.

Each stage's ONNX model is parsed, built at the configured precision (FP16/BF16; FP8 only
for an export with FP8 quantize/dequantize nodes on compute capability 8.9+, otherwise the
fallback is logged) with one optimisation profile spanning 1..``max_cameras`` cameras and
1..``max_prefix_tokens`` prefix tokens, and serialised into the engine cache
(:mod:`qwen_vla_ros.model.engine_cache` decides keys, profiles and reuse). A shared timing
cache makes rebuilds fast. Inference binds torch tensors' device memory directly
(``set_tensor_address``), allocates outputs with torch, and enqueues on one
:class:`ExternalStream` ordered with torch's stream.

TensorRT's libraries (libnvinfer) are not on PyPI for every platform, and cannot be installed
on the development machines of this project: :func:`require_tensorrt` fails with what to
install, and this module imports ``tensorrt`` only there.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qwen_vla_ros.config.runtime import TensorRTSettings
from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError
from qwen_vla_ros.model.engine_cache import (
    EngineKey,
    ProfileShapes,
    check_profile_limits,
    engine_dir,
    export_digest,
    profile_shapes,
    resolve_precision,
    reuse_decision,
    shapes_fit,
    timing_cache_path,
    write_engine,
)
from qwen_vla_ros.model.external_stream import ExternalStream
from qwen_vla_ros.model.onnx_manifest import ExportManifest
from qwen_vla_ros.model.stages import EngineStages

if TYPE_CHECKING:
    from qwen_vla_ros.model.task import Task

LOG = logging.getLogger(__name__)
INSTALL_HINT = (
    "backend 'tensorrt' needs NVIDIA TensorRT with its Python bindings and libraries (libnvinfer) on a CUDA "
    "machine: `pip install tensorrt` (or the tensorrt-cu12 / tensorrt-cu13 package matching your CUDA), or "
    "NVIDIA's TensorRT tarball or container. Without it use backend 'torch' (CUDA graphs) or 'onnxruntime'"
)


class TensorRTUnavailable(QwenVlaError, ImportError):
    """TensorRT cannot be imported; the message says what to install."""


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or TensorRTUnavailable naming what to install."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: bindings present, libnvinfer missing
        raise TensorRTUnavailable(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return tensorrt


def has_fp8_quantization(onnx_path: Path) -> bool:
    """Whether the graph carries FP8 quantize/dequantize nodes (FP8 engines need them)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
    zero_points = {i.name for i in graph.initializer if i.data_type in fp8}
    return any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in zero_points for n in graph.node)


def _builder_flags(trt: Any, precision: str) -> list[Any]:
    return {
        "fp32": [],
        "fp16": [trt.BuilderFlag.FP16],
        "bf16": [trt.BuilderFlag.BF16],
        "fp8": [trt.BuilderFlag.FP8, trt.BuilderFlag.BF16],
    }[precision]


def build_engine(trt: Any, onnx_path: Path, precision: str, profile: ProfileShapes, workspace_mb: int,
                 timing_cache: Path) -> bytes:
    """Parse, build with one optimisation profile, and update the shared timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in _builder_flags(trt, precision):
        config.set_flag(flag)
    optimisation = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimisation.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimisation)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine:
    """One deserialised engine and its execution context, called with torch CUDA tensors."""

    def __init__(self, trt: Any, plan: bytes, name: str, io_names: tuple[list[str], list[str]],
                 profile: ProfileShapes, stream: ExternalStream, device: torch.device) -> None:
        self.trt = trt
        self.name = name
        self.profile = profile
        self.stream = stream
        self.device = device
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT cannot deserialise the {name} engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        engine_inputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.inputs, self.outputs = io_names  # the stage's call and return order; tensors are bound by name
        if engine_inputs != set(self.inputs) or set(names) != {*self.inputs, *self.outputs}:
            raise RuntimeError(f"the {name} engine's tensors {names} differ from the export's {io_names}")
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self._lock = threading.Lock()  # an execution context holds one call's shapes and addresses

    def _torch_dtype(self, dtype: Any) -> torch.dtype:
        trt = self.trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                 trt.int64: torch.int64, trt.int32: torch.int32, trt.bool: torch.bool}
        return table[dtype]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shapes = {name: tuple(t.shape) for name, t in zip(self.inputs, tensors, strict=True)}
        outside = shapes_fit(self.profile, shapes)
        if outside:
            raise ValueError(f"{self.name} engine: inputs outside its optimisation profile: {outside}")
        with self._lock:
            return self._enqueue(tensors)

    def _enqueue(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        kept = []  # the bound memory must outlive the enqueue
        for name, tensor in zip(self.inputs, tensors, strict=True):
            tensor = tensor.to(self.device, self.dtypes[name]).contiguous()
            kept.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            output = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                 device=self.device)
            self.context.set_tensor_address(name, output.data_ptr())
            outputs.append(output)
        with self.stream.ordered() as handle:
            if not self.context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT failed to enqueue the {self.name} engine")
        return tuple(outputs)


class TensorRTStages(EngineStages):
    def __init__(self, folder: Path, manifest: ExportManifest, settings: TensorRTSettings,
                 device: torch.device) -> None:
        trt = require_tensorrt()
        if device.type != "cuda":
            raise InvalidArgumentError(f"backend 'tensorrt' needs a cuda device, got {device}")
        check_profile_limits(manifest, settings.max_cameras, settings.max_prefix_tokens)
        self.settings = settings
        capability = torch.cuda.get_device_capability(device)
        fp8_ready = has_fp8_quantization(folder / manifest.stage("step_backbone").file)
        precision = resolve_precision(settings.precision, capability, fp8_ready)
        if precision.note:
            LOG.warning("tensorrt precision %s instead of %s: %s", precision.name, settings.precision, precision.note)
        key = EngineKey(
            checkpoint_fingerprint=manifest.checkpoint_fingerprint,
            export_digest=export_digest(manifest),
            gpu_name=torch.cuda.get_device_name(device),
            compute_capability=capability,
            tensorrt_version=trt.__version__,
            precision=precision.name,
            max_cameras=settings.max_cameras,
            max_prefix_tokens=settings.max_prefix_tokens,
        )
        cache_root = Path(settings.engine_cache_dir).expanduser()
        folder_for_key, timing = engine_dir(cache_root, key), timing_cache_path(cache_root, key)
        self.stream = ExternalStream(device)
        engines = {}
        for name, stage in manifest.stages.items():
            profile = profile_shapes(stage, settings.max_cameras, settings.max_prefix_tokens)
            path = folder_for_key / f"{name}.engine"
            decision = reuse_decision(path, key, name)
            LOG.info("tensorrt %s: %s", name, decision.reason)
            if decision.reuse:
                plan = path.read_bytes()
            else:
                plan = build_engine(trt, folder / stage.file, precision.name, profile, settings.workspace_mb, timing)
                write_engine(path, plan, key, name, profile)
            io_names = ([spec.name for spec in stage.inputs], [spec.name for spec in stage.outputs])
            engines[name] = TensorRTEngine(trt, plan, name, io_names, profile, self.stream, device)
        super().__init__(engines)
        self.name = f"tensorrt {trt.__version__} {precision.name}"

    def check_task(self, task: Task) -> None:
        cameras, prefix = len(task.cameras), len(task.layout.prefix_ids)
        if cameras > self.settings.max_cameras:
            raise InvalidArgumentError(f"embodiment {task.embodiment.name!r} has {cameras} cameras; the TensorRT profiles "
                             f"cover up to tensorrt.max_cameras = {self.settings.max_cameras}")
        if prefix > self.settings.max_prefix_tokens:
            raise InvalidArgumentError(f"the task's prefix has {prefix} tokens; the TensorRT profiles cover up to "
                             f"tensorrt.max_prefix_tokens = {self.settings.max_prefix_tokens}")
