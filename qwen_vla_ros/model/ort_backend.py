"""``backend="onnxruntime"``: the exported stage graphs in ONNX Runtime sessions.

Execution providers come from ``RuntimeConfig.onnxruntime.providers`` in order of preference;
the ones this onnxruntime build offers are used (on a CPU device only the CPU provider) and
the providers each session really got are logged, because ONNX Runtime silently falls back
when, say, the TensorRT provider's libraries are missing.

Tensors cross by IOBinding: inputs are bound by their torch data pointers and outputs come
back through DLPack, so nothing is copied on CPU or GPU. On CUDA every session runs on one
:class:`ExternalStream` ordered with torch's stream.

Real-time chunking needs the vector-Jacobian product through the DiT; the export traced it
into ``dit_guided.onnx``, so guided steps run in ONNX Runtime too.

``precision: int8`` runs the vision tower, the backbone step and the DiT's cross-attention
keys and values with matrix-product weights quantised to int8 per output channel and
activations quantised per call (onnxruntime's dynamic quantisation), written once beside the
float32 files. It trades accuracy for speed on CPUs with VNNI or AMX; the DiT step stays
float32: int8 saved 1 to 2 ms a step but moved the actions 40 times further from torch's, and
its error compounds over the K steps (measured, docs/benchmarks.md).

Unless ``RuntimeConfig.flush_denormals`` is off the session pool threads flush denormal
floats to zero (see :mod:`qwen_vla_ros.model.denormals`, which covers the calling thread).
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qwen_vla_ros.config.runtime import OnnxRuntimeSettings
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.external_stream import ExternalStream
from qwen_vla_ros.model.onnx_manifest import ExportManifest, OnnxExportError
from qwen_vla_ros.model.stages import EngineStages

if TYPE_CHECKING:
    import onnxruntime

    from qwen_vla_ros.model.task import Task

LOG = logging.getLogger(__name__)
QUANTISED_STAGES = ("vision", "step_backbone", "context_kv")
QUANTISED_OPERATORS = ("MatMul", "Gemm")
QUANTISED_SUFFIX = ".int8-matmul.onnx"  # names what is quantised, so files of an earlier choice are not reused
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_NUMPY_TYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.int32: "int32",
                torch.bool: "bool"}


def choose_providers(requested: Sequence[str], available: Sequence[str], device_type: str) -> list[str]:
    """The providers to open sessions with, most preferred first, CPU last.

    On a cuda device the requested GPU providers this build offers come first (CPU stays as
    the fallback for operators they lack); on a cpu device the tensors live in host memory,
    so only the CPU provider runs.
    """
    unsupported = [name for name in requested if name not in (*GPU_PROVIDERS, CPU_PROVIDER)]
    if unsupported:
        raise InvalidArgumentError(f"unsupported onnxruntime provider(s) {unsupported}; use {[*GPU_PROVIDERS, CPU_PROVIDER]}")
    if device_type != "cuda":
        if CPU_PROVIDER not in requested:
            raise InvalidArgumentError(f"device {device_type} runs on {CPU_PROVIDER}, which the providers {list(requested)} omit")
        return [CPU_PROVIDER]
    usable = [name for name in requested if name in GPU_PROVIDERS and name in available]
    if not usable:
        raise InvalidArgumentError(
            f"device cuda needs one of {list(GPU_PROVIDERS)} from the requested {list(requested)}, but this "
            f"onnxruntime offers {list(available)}; install onnxruntime-gpu (and TensorRT for its provider)"
        )
    return [*usable, CPU_PROVIDER]


def provider_options(providers: Sequence[str], device: torch.device, stream: int,
                     cache_dir: Path | None) -> list[dict[str, str]]:
    """Per-provider options: the device, the shared compute stream, TensorRT's engine cache."""
    options: list[dict[str, str]] = []
    for name in providers:
        if name == CPU_PROVIDER:
            options.append({})
            continue
        option = {"device_id": str(device.index or 0), "user_compute_stream": str(stream)}
        if name == "TensorrtExecutionProvider" and cache_dir is not None:
            option.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir),
                          trt_timing_cache_enable="True", trt_timing_cache_path=str(cache_dir))
        options.append(option)
    return options


def session_options(settings: OnnxRuntimeSettings, flush_denormals: bool) -> onnxruntime.SessionOptions:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(
        onnxruntime.GraphOptimizationLevel, OPTIMIZATION_LEVELS[settings.optimization_level]
    )
    options.intra_op_num_threads = settings.intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spin_wait else "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1" if flush_denormals else "0")
    options.log_severity_level = 3  # errors only: the provider choice is logged here
    return options


def quantised_model(path: Path) -> Path:
    """``NAME.int8-matmul.onnx`` beside ``NAME.onnx``: matrix-product weights int8 per channel, activations per call.

    Only matrix products are quantised: the delta rule's depthwise causal convolution as
    ``ConvInteger`` took 10 to 12 ms of a 65 ms backbone step against well under 1 ms in float32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_suffix(QUANTISED_SUFFIX)
    if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    LOG.info("quantising %s to int8", path.name)
    model = onnx.load(str(path))
    del model.graph.value_info[:]  # the exporter's shape annotations trip the quantiser's shape inference
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        plain = Path(scratch) / path.name
        onnx.save(model, str(plain))
        quantize_dynamic(plain, Path(scratch) / target.name, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(QUANTISED_OPERATORS))
        (Path(scratch) / target.name).replace(target)
    return target


class OrtModel:
    """One ONNX model, called with torch tensors; the outputs are torch tensors on the same device."""

    def __init__(self, path: Path, providers: Sequence[str], options: list[dict[str, str]],
                 session: onnxruntime.SessionOptions, device: torch.device, stream: ExternalStream) -> None:
        import onnxruntime

        self.path = path
        self.session = onnxruntime.InferenceSession(
            str(path), session, providers=list(providers), provider_options=options
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = device
        self.stream = stream

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path.name} takes {len(self.input_names)} inputs, got {len(inputs)}")
        binding = self.session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        kept = []  # the bound memory must outlive the run
        for name, tensor in zip(self.input_names, inputs, strict=True):
            tensor = tensor.to(self.device).contiguous()
            kept.append(tensor)
            binding.bind_input(name, device_type, device_id, _NUMPY_TYPES[tensor.dtype], tuple(tensor.shape),
                               tensor.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, device_type, device_id)
        with self.stream.ordered():
            self.session.run_with_iobinding(binding)
        return tuple(torch.from_dlpack(value) for value in binding.get_outputs())


class OnnxRuntimeStages(EngineStages):
    def __init__(self, folder: Path, manifest: ExportManifest, settings: OnnxRuntimeSettings,
                 device: torch.device, flush_denormals: bool = True) -> None:
        import onnxruntime

        self.manifest = manifest
        self.stream = ExternalStream(device)
        providers = choose_providers(settings.providers, onnxruntime.get_available_providers(), device.type)
        options = provider_options(
            providers, device, self.stream.handle, Path(settings.tensorrt_cache_dir).expanduser()
        )

        def model_file(name: str) -> Path:
            path = folder / manifest.stages[name].file
            return quantised_model(path) if settings.precision == "int8" and name in QUANTISED_STAGES else path

        session = session_options(settings, flush_denormals)
        models = {name: OrtModel(model_file(name), providers, options, session, device, self.stream)
                  for name in manifest.stages}
        super().__init__(models)
        self.session_providers = {name: model.providers[0] for name, model in models.items()}
        self.name = f"onnxruntime {settings.precision} ({', '.join(sorted(set(self.session_providers.values())))})"
        LOG.info("onnxruntime %s on %s: requested providers %s; sessions use %s", onnxruntime.__version__, device,
                 list(settings.providers), self.session_providers)

    def check_task(self, task: Task) -> None:
        cameras = len(task.cameras)
        if cameras > self.manifest.max_cameras:
            raise OnnxExportError(
                f"embodiment {task.embodiment.name!r} has {cameras} cameras but the ONNX export supports at most "
                f"{self.manifest.max_cameras}; re-export with `qwen-vla-ros export --max-cameras {cameras}`"
            )
