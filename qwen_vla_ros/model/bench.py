"""``qwen-vla-ros bench``: per-stage latency of the policy, and a baseline beside it.

The policy is timed through its real ``infer`` with a :class:`StageTimer` attached, so the
figures are the deployed code path of its backend. A baseline runs in the same process,
call by call alternating with the policy, so a noisy shared machine slows both alike:

- ``--compare naive``: what a user would write with plain transformers: a full
  ``Qwen3_5ForConditionalGeneration`` forward over prefix and images every call (all
  layers, LM head included), then the DiT recomputing its cross-attention keys and values
  at every denoising step;
- ``--compare torch``: the same policy's modules in torch eager (the baseline of the
  ONNX Runtime, TensorRT and CUDA-graph backends).

Both use the same seed, so their actions must agree; the difference is reported as a check.
"""
from __future__ import annotations

import os
import platform
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwen_vla_ros.config import EmbodimentConfig, load_embodiment
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.normalization import ChannelNormalizer
from qwen_vla_ros.model.policy import Policy
from qwen_vla_ros.model.stages import Stages, TorchStages
from qwen_vla_ros.model.timing import StageTimer

BASELINES = ("naive", "torch")
Infer = Callable[["Request", StageTimer], np.ndarray]


def bench_embodiment(name: str, cameras: int | None) -> EmbodimentConfig:
    config = load_embodiment(name)
    if cameras is None:
        return config
    if not 1 <= cameras <= len(config.cameras):
        raise InvalidArgumentError(f"--cameras must be in [1, {len(config.cameras)}] for {config.name}, got {cameras}")
    return config.model_copy(update={"cameras": config.cameras[:cameras]})


def random_observation(config: EmbodimentConfig, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Camera frames at their configured size, and a state at the normalisation centre."""
    rng = np.random.default_rng(seed)
    images = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in config.cameras}
    return images, ChannelNormalizer.from_stats(config.normalization.state).offset.copy()


def naive_features(policy: Policy, images: dict[str, np.ndarray]) -> torch.Tensor:
    """Plain transformers: the whole sequence (prefix + images) through the whole model."""
    outputs = policy.backbone_model(**policy.model_inputs(images), output_hidden_states=True)
    return torch.cat([outputs.hidden_states[layer] for layer in policy.manifest.backbone.feature_layers], dim=-1)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.machine()}, {os.cpu_count()} cores"


def _synchronize(device: torch.device) -> Any:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["device_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


@contextmanager
def _swapped(policy: Policy, **attributes: Any) -> Iterator[None]:
    """Set policy attributes (timer, stages) for one call, then restore them."""
    previous = {name: getattr(policy, name) for name in attributes}
    for name, value in attributes.items():
        setattr(policy, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(policy, name, value)


@dataclass(frozen=True)
class Request:
    """One timed call: the observation, the seed and, for real-time chunking, the committed actions."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    seed: int
    committed: np.ndarray | None = None
    delay_steps: int = 0


def _policy_infer(policy: Policy, stages: Stages | None = None) -> Infer:
    """The policy's own infer, with its backend's stages or the given ones."""
    chosen = stages or policy.stages

    def infer(request: Request, timer: StageTimer) -> np.ndarray:
        with _swapped(policy, timer=timer, stages=chosen):
            return policy.infer(request.images, request.state, committed=request.committed,
                                delay_steps=request.delay_steps, seed=request.seed).actions

    return infer


def _naive_infer(policy: Policy) -> Infer:
    def infer(request: Request, timer: StageTimer) -> np.ndarray:
        task = policy.task
        committed = None if request.committed is None else np.asarray(request.committed, dtype=np.float64)
        with _swapped(policy, timer=timer), timer.stage("total"), torch.no_grad():
            with timer.stage("backbone_full"):
                features = naive_features(policy, request.images)
            padded = policy.sample(task, features, request.state, request.seed, committed, request.delay_steps,
                                   reuse_kv=False)
        return policy.chunk(task, padded, request.state, committed, request.delay_steps).actions

    return infer


def _eager_infer(policy: Policy) -> Infer:
    """The same policy with its torch modules run eagerly in place of its backend's stages."""
    return _policy_infer(policy, TorchStages(policy.vision, policy.step_backbone, policy.head))


def _time(
    runs: Infer, baseline: Infer | None, request: Request, count: int, warmup: int, synchronize: Any,
) -> tuple[StageTimer, np.ndarray, StageTimer | None, np.ndarray | None]:
    """Policy and baseline calls alternate, so a noisy shared machine slows both alike."""
    timer, baseline_timer = StageTimer(synchronize), StageTimer(synchronize) if baseline else None
    actions = baseline_actions = None
    for index in range(warmup + count):
        if index == warmup:
            timer.clear()
            if baseline_timer is not None:
                baseline_timer.clear()
        actions = runs(request, timer)
        if baseline is not None and baseline_timer is not None:
            baseline_actions = baseline(request, baseline_timer)
    assert actions is not None  # warmup + count >= 1 calls
    return timer, actions, baseline_timer, baseline_actions


def run_bench(
    policy: Policy,
    embodiment: EmbodimentConfig,
    instruction: str,
    runs: int = 20,
    warmup: int = 3,
    compare: str | None = None,
    seed: int = 0,
    rtc_delay: int = 0,
) -> dict[str, Any]:
    """``rtc_delay`` > 0 times real-time chunking: a first chunk minus its first ``rtc_delay``
    actions is committed, and the next ``rtc_delay`` of those execute during inference."""
    if runs < 1 or warmup < 0:
        raise InvalidArgumentError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if compare not in (None, *BASELINES):
        raise InvalidArgumentError(f"--compare must be one of {list(BASELINES)}, got {compare!r}")
    if policy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(policy.device)
    policy.set_task(embodiment, instruction)
    images, state = random_observation(embodiment, seed)
    request = Request(images, state, seed)
    if rtc_delay:
        horizon = policy.task.entry.chunk_length
        if not 1 <= rtc_delay <= horizon // 2:
            raise InvalidArgumentError(
                f"--rtc-delay must lie in [1, {horizon // 2}] for {horizon}-action chunks, got {rtc_delay}"
            )
        previous = policy.infer(images, state, seed=seed + 1).actions
        request = Request(images, state, seed, previous[rtc_delay:], rtc_delay)
    baseline = {"naive": _naive_infer, "torch": _eager_infer}[compare](policy) if compare else None
    timer, actions, baseline_timer, baseline_actions = _time(
        _policy_infer(policy), baseline, request, runs, warmup, _synchronize(policy.device)
    )
    stages = timer.summary()
    report: dict[str, Any] = {
        "checkpoint": policy.source,
        "backend": policy.stages.name,
        "device": str(policy.device),
        "device_name": _device_name(policy.device),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(policy.dtype).removeprefix("torch."),
        "embodiment": embodiment.name,
        "cameras": len(embodiment.cameras),
        "camera_resolution": sorted({f"{c.height}x{c.width}" for c in embodiment.cameras}),
        "model_resolution": f"{policy.patch_spec.height}x{policy.patch_spec.width}",
        "prefix_tokens": len(policy.task.layout.prefix_ids),
        "step_tokens": len(policy.task.layout.step_ids),
        "chunk_length": policy.task.entry.chunk_length,
        "denoising_steps": policy.num_steps,
        "rtc_delay_steps": rtc_delay,
        "runs": runs,
        "warmup": warmup,
        "stages": stages,
    }
    report["memory"] = _peak_memory_mb(policy.device)  # with --compare: the peak of both paths
    if baseline_timer is not None:
        baseline_stages = baseline_timer.summary()
        report["baseline"] = {
            "name": compare,
            "stages": baseline_stages,
            "max_abs_action_diff": float(np.max(np.abs(baseline_actions - actions))),
        }
        report["speedup_p50"] = baseline_stages["total"]["p50_ms"] / stages["total"]["p50_ms"]
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['checkpoint']}, {report['backend']} on {report['device']} "
        f"({report['device_name']}, {report['dtype']}), "
        f"{report['embodiment']} {report['cameras']} camera(s) -> {report['model_resolution']}, "
        f"{report['prefix_tokens']} prefix + {report['step_tokens']} step tokens, K={report['denoising_steps']}"
        f"{', RTC delay ' + str(report['rtc_delay_steps']) if report['rtc_delay_steps'] else ''}, "
        f"{report['runs']} runs",
        f"{'stage':<16}{'p50 ms':>10}{'p99 ms':>10}{'count':>8}",
    ]
    for name, stats in report["stages"].items():
        lines.append(f"{name:<16}{stats['p50_ms']:>10.2f}{stats['p99_ms']:>10.2f}{stats['count']:>8}")
    lines.append("memory: " + ", ".join(f"{k} {v:.0f}" for k, v in report["memory"].items()))
    if "baseline" in report:
        baseline = report["baseline"]
        total = baseline["stages"]["total"]
        what = {"naive": "naive (full transformers forward + DiT recomputing K/V)", "torch": "torch eager"}
        lines.append(
            f"{what[baseline['name']]}: p50 {total['p50_ms']:.2f} ms, p99 {total['p99_ms']:.2f} ms -> speed-up "
            f"{report['speedup_p50']:.2f}x (actions differ by at most {baseline['max_abs_action_diff']:.2e})"
        )
    return "\n".join(lines)
