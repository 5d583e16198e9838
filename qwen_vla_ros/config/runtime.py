"""Typed runtime settings: which checkpoint, how to run it, and how chunks are blended.

These are choices of a deployment, not facts about a robot, so they live apart from the
embodiment configs and can be swapped without touching robot numbers.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qwen_vla_ros.config.base import MAX_RATE_HZ, StrictModel

Backend = Literal["torch", "onnxruntime", "tensorrt"]


class Blending(StrictModel):
    """How the executing trajectory is handed over to a newly arrived chunk.

    ``crossfade`` blends old into new over ``crossfade_steps`` control periods with smooth
    (cosine) weights; ``temporal_ensemble`` averages every overlapping prediction with ACT's
    exp(-decay * i) weights, i = 0 for the oldest; ``latest`` switches at once. ``max_chunks``
    and ``queue_depth`` bound the controller's work however fast chunks arrive
    (docs/architecture.md, chunk intake).
    """

    method: Literal["crossfade", "temporal_ensemble", "latest"] = "crossfade"
    crossfade_steps: int = Field(default=10, ge=1)
    ensemble_decay: float = Field(default=0.01, ge=0)
    max_chunks: int = Field(
        default=16, ge=1, le=64,
        description="chunks blended at once; one more retires the oldest, so a flood of chunks cannot grow a period's work",
    )
    queue_depth: int = Field(
        default=2, ge=1, le=64,
        description="received chunks waiting for preparation; one more pushes out the oldest (counted as chunks_dropped)",
    )


class InferenceSchedule(StrictModel):
    """When the policy starts the next inference.

    ``remaining``: once the actions left in the last published chunk (its last action's due
    time minus now) drop below ``remaining_threshold_s``. ``rate``: at a fixed ``replan_hz``.
    Outside ``policy`` mode nothing is published, but one inference runs every
    ``keep_warm_s`` so caches, clocks and allocators stay warm for the return.
    """

    trigger: Literal["remaining", "rate"] = "remaining"
    remaining_threshold_s: float = Field(default=0.5, gt=0)
    replan_hz: float = Field(default=2.0, gt=0, le=MAX_RATE_HZ)
    latency_window: int = Field(default=20, ge=1, description="inference latencies kept for the p90 delay estimate")
    keep_warm_s: float = Field(default=2.0, ge=0, description="warm-up inference period outside policy mode; 0: none")


class RealTimeChunking(StrictModel):
    """Freeze the actions that will execute during inference and inpaint the rest (Black et al.).

    The policy passes at most ``max(delay_steps, execution_horizon)`` committed actions: the
    frozen ones plus the overlap over which the new chunk is guided towards the old plan.
    ``guidance_limit`` caps the guidance weight beta(tau) (largest at the first step):
    ``min(beta,K)`` at the denoising step count K as well as ``max_guidance_weight`` (one
    Euler step never overshoots), ``beta`` at ``max_guidance_weight`` only, as the reference
    implementation does; the execution-strategy study compares them (docs/evaluation.md).
    """

    enabled: bool = True
    max_guidance_weight: float = Field(default=10.0, ge=0)
    guidance_limit: Literal["min(beta,K)", "beta"] = "min(beta,K)"
    execution_horizon: int = Field(default=10, ge=1)


MAX_ADDED_DELAY_S = 2.0  # the safety section's max_chunk_age_s is 2 s: a longer hold-back could only be refused


class StudySettings(StrictModel):
    """Study tools, off by default: not for running a robot.

    ``added_delay_s`` holds each chunk back for that long after inference before the policy
    publishes it, so the execution-strategy study can run one checkpoint at the inference
    delays of slower hardware (docs/evaluation.md). The chunk keeps its observation stamp,
    so the controller sees the longer delay as it would see a slower model.
    """

    added_delay_s: float = Field(default=0.0, ge=0.0, le=MAX_ADDED_DELAY_S)


class ObservationSync(StrictModel):
    sync_tolerance_s: float = Field(default=0.05, gt=0, description="max spread between camera stamps")
    state_tolerance_s: float = Field(default=0.05, gt=0, description="max gap joint states to observation")
    max_age_s: float = Field(default=0.5, gt=0, description="nothing older than this is used")


class ClockCheck(StrictModel):
    """Heartbeats on /qwen_vla/heartbeat compare this host's clock with the other hosts'.

    Chunks carry observation stamps that the controller compares with its own clock, so a
    policy host whose clock is off by more than ``max_offset_s`` gets a warning.
    """

    heartbeat_hz: float = Field(default=1.0, ge=0, le=MAX_RATE_HZ, description="0: publish no heartbeat")
    max_offset_s: float = Field(default=0.01, gt=0)
    window: int = Field(default=30, ge=1, description="heartbeats per peer kept for the estimate")


class OnnxRuntimeSettings(StrictModel):
    providers: list[str] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        description="in order of preference; on cuda the available GPU ones are used, on cpu the CPU one; logged",
    )
    model_dir: str | None = Field(
        default=None, description="exported ONNX folder; None exports on demand into ~/.cache/qwen_vla_ros/onnx"
    )
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="int8: vision and backbone weights dynamically quantised (faster on CPUs with VNNI, approximate)",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="0: onnxruntime's default (one per physical core)")
    spin_wait: bool = Field(
        default=False,
        description="intra-op threads busy-wait between operators: lowest latency on dedicated cores, "
        "about 2x slower when the cores are shared (measured, docs/benchmarks.md)",
    )
    tensorrt_cache_dir: str = Field(
        default="~/.cache/qwen_vla_ros/ort_trt", description="engine and timing cache of the TensorRT provider"
    )


class TensorRTSettings(StrictModel):
    precision: Literal["fp32", "fp16", "bf16", "fp8"] = Field(
        default="bf16", description="fp8 needs an export with FP8 quantize/dequantize nodes and compute capability 8.9+"
    )
    engine_cache_dir: str = "~/.cache/qwen_vla_ros/trt"
    onnx_dir: str | None = Field(
        default=None, description="exported ONNX folder to build from; None exports on demand"
    )
    max_cameras: int = Field(default=4, ge=1, description="optimisation profile: cameras 1..max_cameras")
    max_prefix_tokens: int = Field(default=512, ge=1, description="optimisation profile: prefix 1..max_prefix_tokens")
    workspace_mb: int = Field(default=4096, ge=64, description="builder workspace memory pool")


class RuntimeConfig(StrictModel):
    """``execution`` ``asynchronous`` infers while the robot executes the previous chunk (the
    runtime's design); ``synchronous`` is the execution-strategy study's baseline: stop, infer,
    execute. The policy starts an inference only once the previous chunk has run out as the
    controller executes it, and the controller executes each chunk from its arrival rather than
    from its observation stamp (the robot stood still in between, so nothing of it is late).
    The schedule's trigger is then unused."""

    checkpoint: str | None = Field(default=None, description="checkpoint directory; None means none loaded yet")
    backend: Backend = "torch"
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(default=None, description="None: backend default")
    cuda_graphs: bool = Field(
        default=True,
        description="torch backend on cuda: replay vision, the backbone step and the K-step sampler as CUDA graphs",
    )
    flush_denormals: bool = Field(
        default=True,
        description="cpu, torch and onnxruntime: treat denormal floats as zero; the delta rule's decayed state "
        "underflows into them and CPU arithmetic on denormals is many times slower (measured, docs/benchmarks.md)",
    )
    denoising_steps: int | None = Field(default=None, ge=1, le=10, description="None: the checkpoint's default")
    instruction: str = ""
    execution: Literal["asynchronous", "synchronous"] = "asynchronous"
    blending: Blending = Field(default_factory=Blending)
    schedule: InferenceSchedule = Field(default_factory=InferenceSchedule)
    rtc: RealTimeChunking = Field(default_factory=RealTimeChunking)
    sync: ObservationSync = Field(default_factory=ObservationSync)
    clock_check: ClockCheck = Field(default_factory=ClockCheck)
    onnxruntime: OnnxRuntimeSettings = Field(default_factory=OnnxRuntimeSettings)
    tensorrt: TensorRTSettings = Field(default_factory=TensorRTSettings)
    study: StudySettings = Field(default_factory=StudySettings)

    @model_validator(mode="after")
    def _device_fits_backend(self) -> RuntimeConfig:
        if self.backend == "tensorrt" and not self.device.startswith("cuda"):
            raise ValueError(f"backend 'tensorrt' needs a cuda device, got {self.device!r}")
        return self
