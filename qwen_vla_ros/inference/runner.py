"""The policy node's inference loop, without ROS.

``PolicyRunner.run`` is the node's inference thread: it calls ``step`` over and over and,
when nothing was inferred, sleeps until the scheduler says something can be due, or until
new input wakes it (``wake``), or ``stop``. A failing step is logged and retried a second
later, since the thread must outlive any one failure. ``PolicyRunner.step`` applies a
pending instruction (one prefix rebuild), asks the scheduler whether an inference is due,
takes a synchronised observation, adds the committed actions for real-time chunking, runs
the model and hands the chunk, stamped with the observation's stamp, to ``publish`` (held
back first by ``study.added_delay_s``, a study tool that is off by default).
Everything it decides is counted for /diagnostics and logged through a keyed throttle, so a
camera that is gone is named once every few seconds rather than at every attempt.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import EmbodimentConfig, RuntimeConfig
from qwen_vla_ros.errors import MalformedMessageError, PolicyInputError, QwenVlaError
from qwen_vla_ros.imaging import map_frames
from qwen_vla_ros.inference.committed import CommittedHistory
from qwen_vla_ros.inference.scheduler import POLICY, Decision, InferenceScheduler
from qwen_vla_ros.inference.stats import RateMeter, Window, steps_covering
from qwen_vla_ros.log import KeyedThrottle, Logger
from qwen_vla_ros.perception.sync import Observation, ObservationSync, Skip, SkipReason

WARNING_PERIOD_S = 2.0
REPORT_WINDOW = 200  # latencies kept for the p50/p99 in diagnostics
DELAY_PERCENTILE = 90.0
FAILURE_RETRY_S = 1.0  # after a step raised: wait before the next one
FAILURE_LOG_PERIOD_S = 5.0
INPUT_WAIT_S = 0.05  # due, but no usable observation yet: the longest wait for new input


class Signal(Protocol):
    """What ``run`` needs of its stop and wake signals (``threading.Event`` fits)."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def clear(self) -> None: ...


class InferencePolicy(Protocol):
    """What the runner needs of ``qwen_vla_ros.model.Policy``."""

    def set_task(self, embodiment: EmbodimentConfig, instruction: str) -> None: ...
    def infer(self, images: Mapping[str, np.ndarray], state: np.ndarray, *, committed: np.ndarray | None,
              delay_steps: int, seed: int | None) -> ActionChunk: ...


class StepOutcome(str, Enum):
    """What one :meth:`PolicyRunner.step` did; the value is the text logs show."""

    WAIT = "wait"  # nothing due, or no observation newer than the last one
    SKIPPED = "skipped"  # due, but no usable observation or no usable chunk (``StepResult.skip`` says why)
    PUBLISHED = "published"
    WARMED = "warmed"  # an inference outside policy mode, to keep the model warm; nothing published
    DISCARDED = "discarded"  # the operator took over while the model ran

    def __str__(self) -> str:  # the text, also where Python 3.12's format() would print the member name
        return self.value


# Reasons that are the model's or the image's fault rather than the inputs' timing: logged as errors.
RUNNER_ERRORS = (SkipReason.BAD_IMAGE, SkipReason.INFERENCE_ERROR, SkipReason.NONFINITE_ACTIONS)


@dataclass
class StepResult:
    outcome: StepOutcome
    chunk: ActionChunk | None = None
    skip: Skip | None = None


@dataclass
class Counters:
    chunks: int = 0
    warmups: int = 0
    prefix_builds: int = 0
    discarded: int = 0
    rtc_chunks: int = 0
    skipped: Counter = field(default_factory=Counter)


class PolicyRunner:
    def __init__(
        self,
        policy: InferencePolicy,
        embodiment: EmbodimentConfig,
        runtime: RuntimeConfig,
        sync: ObservationSync,
        decode: Callable[[str, Any], np.ndarray],
        publish: Callable[[ActionChunk], None],
        clock: Callable[[], int],
        log: Logger,
        instruction: str,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.embodiment = embodiment
        self.runtime = runtime
        self.sync = sync
        self.decode = decode  # mostly OpenCV's resize: the cameras decode side by side on the frame pool
        self.publish = publish
        self.clock = clock
        self.log = log
        self.seed = seed
        self.sleep = sleep
        self.synchronous = runtime.execution == "synchronous"
        self.scheduler = InferenceScheduler(runtime.schedule, self.synchronous)
        self.committed = CommittedHistory(embodiment.action.names)
        self.rtc = runtime.rtc.enabled and embodiment.commands_are_actions
        if runtime.rtc.enabled and not self.rtc:
            log.info(f"real-time chunking is off for {embodiment.name}: its controller commands are not its action "
                     "channels, so there are no committed actions to continue")
        self.action_dt = embodiment.control.action_dt
        self.chunk_length = embodiment.control.chunk_length
        self.counters = Counters()
        self.delay_latency = Window(runtime.schedule.latency_window)  # s, observation stamp -> published
        self.publish_age = Window(REPORT_WINDOW)
        self.inference_time = Window(REPORT_WINDOW)
        self.chunk_rate = RateMeter()
        self.throttle = KeyedThrottle(WARNING_PERIOD_S)
        self._failure_throttle = KeyedThrottle(FAILURE_LOG_PERIOD_S)
        self.last_delay_steps = 0
        self.last_chunk_stamp_ns: int | None = None
        self.last_skip: Skip | None = None
        self._last_observation_ns: int | None = None
        self._lock = threading.Lock()
        self._pending_instruction: str | None = None
        self.instruction = instruction
        self._build_prefix(instruction)

    # ------------------------------------------------------------------ inputs (any thread)
    def set_instruction(self, text: str) -> None:
        """Takes effect at the next step: the prefix is rebuilt once, then inference goes on."""
        with self._lock:
            self._pending_instruction = text

    def set_mode(self, mode: str) -> bool:
        changed = self.scheduler.set_mode(mode)
        if changed:
            self.log.info(f"mode {mode}: " + ("inferring" if mode == POLICY else "not publishing, model kept warm"))
        return changed

    # ------------------------------------------------------------------ the loop
    def run(self, stop: Signal, wake: Signal, alive: Callable[[], bool] = lambda: True) -> None:
        """Step until ``stop`` is set; ``wake`` is set by the node whenever new input arrives.

        ``alive`` false after a failed step means the node is shutting down (Ctrl-C or SIGTERM shut
        its context while the step published): that failure is the requested shutdown, not a fault,
        so the loop ends without a traceback.
        """
        while not stop.is_set():
            wake.clear()
            try:
                result = self.step()
            except Exception:  # noqa: BLE001 - the inference thread must outlive any one failure
                if not alive():
                    return
                if self._failure_throttle.ready("step", self.clock()):
                    self.log.error(f"inference step failed:\n{traceback.format_exc()}")
                stop.wait(FAILURE_RETRY_S)
                continue
            if result.outcome not in (StepOutcome.WAIT, StepOutcome.SKIPPED):
                continue
            due_in = self.scheduler.wait_s(self.clock())
            if due_in > 0:
                stop.wait(due_in)  # nothing can be due before then
            else:
                wake.wait(INPUT_WAIT_S)  # due, but no usable observation yet: wait for new input

    def step(self) -> StepResult:
        self._apply_instruction()
        now_ns = self.clock()
        decision = self.scheduler.decide(now_ns)
        if decision == "wait":
            return StepResult(StepOutcome.WAIT)
        observation = self.sync.assemble(now_ns, self._last_observation_ns if decision == "infer" else None)
        if isinstance(observation, Skip):
            return self._skipped(observation, now_ns)
        try:
            cameras = list(observation.frames)
            images = dict(zip(cameras, map_frames(self.decode, cameras, observation.frames.values()), strict=True))
        except MalformedMessageError as exc:
            return self._skipped(Skip(SkipReason.BAD_IMAGE, "image", str(exc)), now_ns)
        committed, delay_steps = self._committed(observation, now_ns) if decision == "infer" else (None, 0)
        self.scheduler.started(now_ns, decision)
        return self._infer(decision, observation, images, committed, delay_steps)

    def _infer(self, decision: Decision, observation: Observation, images: dict[str, np.ndarray],
               committed: np.ndarray | None, delay_steps: int) -> StepResult:
        started_ns = self.clock()
        try:
            chunk = self.policy.infer(images, observation.state, committed=committed, delay_steps=delay_steps,
                                      seed=self.seed)
        except (PolicyInputError, RuntimeError) as exc:  # an observation it refused, or torch (e.g. out of memory): retried
            return self._skipped(Skip(SkipReason.INFERENCE_ERROR, "model", f"inference failed: {exc}"), started_ns)
        finished_ns = self.clock()
        self.inference_time.add((finished_ns - started_ns) / NS_PER_S)
        if decision == "warm":
            self.counters.warmups += 1
            return StepResult(StepOutcome.WARMED)
        if not np.all(np.isfinite(chunk.actions)):
            return self._skipped(
                Skip(SkipReason.NONFINITE_ACTIONS, "model", "the model produced non-finite actions"), finished_ns
            )
        if self.runtime.study.added_delay_s > 0:  # the study's slower model: the result is held back
            self.sleep(self.runtime.study.added_delay_s)
        if self.scheduler.mode != POLICY:  # the operator took over while the model ran
            self.counters.discarded += 1
            return StepResult(StepOutcome.DISCARDED)
        stamped = chunk.stamped(observation.stamp_ns)
        self.publish(stamped)
        published_ns = self.clock()
        age_s = (published_ns - observation.stamp_ns) / NS_PER_S
        self.delay_latency.add(age_s)
        self.publish_age.add(age_s)
        self.chunk_rate.add(published_ns)
        self.counters.chunks += 1
        self.counters.rtc_chunks += committed is not None
        self.last_delay_steps = delay_steps
        self.last_chunk_stamp_ns = observation.stamp_ns
        self._last_observation_ns = observation.stamp_ns
        span_ns = stamped.due_ns(stamped.horizon - 1) - observation.stamp_ns
        # synchronous: the controller executes the chunk from its arrival, about now
        self.scheduler.published((published_ns if self.synchronous else observation.stamp_ns) + span_ns)
        return StepResult(StepOutcome.PUBLISHED, chunk=stamped)

    # ------------------------------------------------------------------ parts
    def _apply_instruction(self) -> None:
        with self._lock:
            pending, self._pending_instruction = self._pending_instruction, None
        if pending is None or pending == self.instruction:
            return
        try:
            self._build_prefix(pending)
        except QwenVlaError as exc:  # reserved tokens, a prefix past the backend's limit: judged bad, not a bug
            self.log.error(f"instruction {pending!r} rejected, keeping {self.instruction!r}: {exc}")
            return
        self.instruction = pending

    def _build_prefix(self, instruction: str) -> None:
        started_ns = self.clock()
        self.policy.set_task(self.embodiment, instruction)
        self.counters.prefix_builds += 1
        self.log.info(f"task prefix built in {(self.clock() - started_ns) / 1e6:.0f} ms for instruction {instruction!r}")

    def _committed(self, observation: Observation, now_ns: int) -> tuple[np.ndarray | None, int]:
        """The committed actions from the observation's stamp on, and how many of them run
        before the new chunk can take over: the p90 of measured observation-to-publish
        latency, and never fewer than have already elapsed."""
        if not self.rtc:
            return None, 0
        p90 = self.delay_latency.percentile(DELAY_PERCENTILE) or 0.0
        elapsed_s = (now_ns - observation.stamp_ns) / NS_PER_S
        delay = max(steps_covering(p90, self.action_dt), steps_covering(elapsed_s, self.action_dt))
        rows = min(self.chunk_length, max(delay, self.runtime.rtc.execution_horizon))
        committed = self.committed.resample(observation.stamp_ns, self.action_dt, rows)
        if committed is None:
            return None, 0
        return committed, min(delay, len(committed))

    def _skipped(self, skip: Skip, now_ns: int) -> StepResult:
        if skip.reason == SkipReason.WAITING:
            return StepResult(StepOutcome.WAIT, skip=skip)
        self.counters.skipped[skip.reason] += 1
        self.last_skip = skip
        if self.throttle.ready((skip.reason, skip.subject), now_ns):
            # Two call sites: rclpy's logger refuses one call site logging at two severities.
            if skip.reason in RUNNER_ERRORS:
                self.log.error(f"no inference: {skip.message}")
            else:
                self.log.warning(f"no inference: {skip.message}")
        return StepResult(StepOutcome.SKIPPED, skip=skip)

    # ------------------------------------------------------------------ reporting
    def figures(self, now_ns: int) -> dict[str, float | int | str]:
        def ms(window: Window, q: float) -> float:
            value = window.percentile(q)
            return float("nan") if value is None else round(value * 1000.0, 2)

        figures: dict[str, float | int | str] = {
            "mode": self.scheduler.mode,
            "instruction": self.instruction,
            "chunks": self.counters.chunks,
            "chunks_per_s": round(self.chunk_rate.rate(now_ns), 3),
            "inference_ms_p50": ms(self.inference_time, 50),
            "inference_ms_p99": ms(self.inference_time, 99),
            "observation_age_at_publish_ms_p50": ms(self.publish_age, 50),
            "observation_age_at_publish_ms_p99": ms(self.publish_age, 99),
            "delay_estimate_ms_p90": ms(self.delay_latency, DELAY_PERCENTILE),
            "rtc_chunks": self.counters.rtc_chunks,
            "last_delay_steps": self.last_delay_steps,
            "last_chunk_stamp_ns": self.last_chunk_stamp_ns if self.last_chunk_stamp_ns is not None else -1,
            "prefix_builds": self.counters.prefix_builds,
            "warmups": self.counters.warmups,
            "discarded": self.counters.discarded,
            "skipped": sum(self.counters.skipped.values()),
        }
        figures.update({f"skipped.{reason}": count for reason, count in sorted(self.counters.skipped.items())})
        return figures
