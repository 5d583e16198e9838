"""``qwen-vla-ros demo``: the whole loop on a bare machine, in MuJoCo, in one command.

Brings ALOHA up in simulation (sim, policy, controller, recorder) through the runner, runs one
recorded trial for a given span of simulated time with a progress line, stops it (labelled by
the sim's success flag), shuts everything down and prints what happened: chunks accepted and
rejected (by reason), the share executed, how far the robot moved and the task's success. It
exits non-zero unless at least 90% of the chunks were executed and they moved the robot, since
chunks published but refused prove nothing. With no ``--checkpoint`` it runs the shipped
reference checkpoint; random weights only with ``--random-weights``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from qwen_vla_ros.bringup.graph import BringupOptions, build_graph
from qwen_vla_ros.bringup.runner import ProcessGroup, StopSignals, report_to_stderr, run_log_dir
from qwen_vla_ros.bringup.session import dead_required, join_graph_dds, stop_nodes, wait_for
from qwen_vla_ros.config import load_runtime, parse_override
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.contract import (
    ACTION_CHUNK,
    COMMAND,
    CONTROLLER_STATUS,
    DIAGNOSTICS,
    MOVE_TO_START,
    SIM_SUCCESS,
    START_POSE,
    TRIAL_SERVICES,
    NodeRole,
    Service,
    role_view,
)
from qwen_vla_ros.control.policy import REJECTION_REASONS
from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError
from qwen_vla_ros.paths import reference_checkpoint_dir
from qwen_vla_ros.recording.trial import TrialStore

EMBODIMENT = "aloha"
COMMAND_QUEUE_DEPTH = 100  # every command is counted for the achieved rate: a deep queue drops none
RANDOM_SIZE = "tiny"  # the random checkpoint's size: on a 2-core CPU its chunks arrive in time (docs/benchmarks.md)
MIN_EXECUTED_FRACTION = 0.9  # below this share of chunks executed, the demo failed (issue 20 §5)
MIN_MOVED_RAD = 0.01  # a joint must move this far for the chunks to count as moving the robot; at rest < 0.0005
START_POSE_MARGIN_S = 5.0  # beyond start_pose.timeout_s, for the outcome to arrive once the controller gives up
DIAGNOSTICS_PERIOD_S = 1.0  # the controller publishes its chunk counts this often: the trial's are read fresh at start and end
RANDOM_WEIGHTS_NOTICE = (
    "The demo runs a checkpoint with RANDOM weights (--random-weights): the arms move aimlessly "
    "but safely, inside the controller's position, velocity and acceleration limits. To run real weights, "
    "pass --checkpoint DIR with a checkpoint directory in the same layout (backbone/, action_head.safetensors, "
    "qwen_vla.json; see docs/model.md)."
)


class NoCheckpointError(QwenVlaError, FileNotFoundError):
    """No checkpoint to run: none given, none shipped, and random weights not asked for."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen_vla_ros"


def ensure_checkpoint(path: str | None, size: str = RANDOM_SIZE, say: Callable[[str], None] = print,
                      random_weights: bool = False, reference: Path | None = None) -> tuple[Path, bool]:
    """(checkpoint directory, whether it has random weights built here).

    A given path must hold a checkpoint. Without one: the shipped reference checkpoint
    (``reference``, default :func:`reference_checkpoint_dir`) if this installation has it, or,
    only when ``random_weights`` is asked for, a ``size`` random checkpoint built once into the
    per-user cache (written beside and renamed, so an interrupted build is redone). Random
    weights are never a silent fallback: they move the arms aimlessly, which is no demo of a policy.
    """
    if path:
        root = Path(path).expanduser()
        if not (root / "qwen_vla.json").is_file():
            raise FileNotFoundError(f"{root} is not a checkpoint directory (no qwen_vla.json)")
        return root, False
    if not random_weights:
        shipped = reference if reference is not None else reference_checkpoint_dir()
        if (shipped / "qwen_vla.json").is_file():
            say(f"using the reference checkpoint {shipped}")
            return shipped, False
        raise NoCheckpointError(
            f"no checkpoint: this installation ships no reference checkpoint (looked in {shipped}); "
            "pass --checkpoint DIR, or --random-weights to run a random checkpoint that moves the arms aimlessly"
        )
    root = cache_root() / "checkpoints" / size
    if (root / "qwen_vla.json").is_file():
        say(f"using the cached {size} random checkpoint {root}")
        return root, True
    from qwen_vla_ros.model.build import make_checkpoint

    say(f"building a {size} random checkpoint into {root} (once; a few seconds)")
    partial = root.with_name(f"{size}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    make_checkpoint(size, partial)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root, True


def achieved_rate(stamps_ns: Sequence[int]) -> float:
    """Messages per second between the first and last stamp (nan with fewer than two)."""
    if len(stamps_ns) < 2 or stamps_ns[-1] <= stamps_ns[0]:
        return math.nan
    return (len(stamps_ns) - 1) * 1e9 / (stamps_ns[-1] - stamps_ns[0])


@dataclass
class Summary:
    ok: bool
    checkpoint: str
    random_weights: bool
    duration_s: float = 0.0
    sim_time_s: float = 0.0
    chunks: int = 0
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    chunks_dropped: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    executed_fraction: float = math.nan
    moved_rad: float = 0.0
    moved_between_ns: list[int] = field(default_factory=list)  # sim stamps of the earliest and latest state counted
    commands: int = 0
    control_rate_hz: float = math.nan
    control_rate_target_hz: float = math.nan
    inference_ms_p50: float = math.nan
    inference_ms_p99: float = math.nan
    real_time_factor: float = math.nan
    success: bool = False
    outcome: str | None = None
    trial_id: str | None = None
    trial_yaml: str | None = None
    bag: str | None = None
    logs: str | None = None
    problems: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)

    def judge(self) -> None:
        """Set ``shortfalls`` and ``ok``: the run must have worked (no problems, a recorded trial),
        executed at least ``MIN_EXECUTED_FRACTION`` of its chunks, and moved the robot; chunks
        that the controller refused or that moved nothing prove nothing (issue 20 §5)."""
        shortfalls = []
        if math.isnan(self.executed_fraction):
            shortfalls.append("no chunk reached the controller during the trial")
        elif self.executed_fraction < MIN_EXECUTED_FRACTION:
            shortfalls.append(f"only {self.executed_fraction:.0%} of chunks were executed (at least "
                              f"{MIN_EXECUTED_FRACTION:.0%} must be): {self.rejection_text()}; a chunk that arrives "
                              "after its actions are due is refused, so the model is too slow for this machine")
        if self.moved_rad < MIN_MOVED_RAD:
            shortfalls.append(f"the robot moved {self.moved_rad:.4f} rad at most (at least {MIN_MOVED_RAD:g} rad "
                              "must be): no chunk moved it")
        self.shortfalls = shortfalls
        self.ok = not self.problems and not shortfalls and self.trial_yaml is not None

    def rejection_text(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.rejections.items()))
        return f"{self.chunks_rejected} rejected" + (f" ({reasons})" if reasons else "") + \
            f", {self.chunks_dropped} dropped unread"

    def text(self) -> str:
        def number(value: float, unit: str = "") -> str:
            return "n/a" if math.isnan(value) else f"{value:.1f}{unit}"

        lines = [
            "demo " + ("finished" if self.ok else "FAILED"),
            f"  trial              {self.trial_id} ({self.outcome}), {self.sim_time_s:.1f} s simulated",
            f"  chunks published   {self.chunks}",
            f"  chunks executed    {self.chunks_accepted} accepted, {self.rejection_text()}: "
            f"{'n/a' if math.isnan(self.executed_fraction) else f'{self.executed_fraction:.0%}'} executed",
            f"  robot moved        {self.moved_rad:.3f} rad (the largest range of a measured joint)",
            f"  inference latency  p50 {number(self.inference_ms_p50, ' ms')}, p99 {number(self.inference_ms_p99, ' ms')}",
            f"  control rate       {number(self.control_rate_hz, ' Hz')} (target {self.control_rate_target_hz:g} Hz, "
            f"{self.commands} commands)",
            f"  sim real-time      {'n/a' if math.isnan(self.real_time_factor) else f'{self.real_time_factor:.3f}'}",
            f"  task success       {self.success}",
            f"  bag                {self.bag}",
            f"  trial.yaml         {self.trial_yaml}",
            f"  node logs          {self.logs}",
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  FAILED: {s}" for s in self.shortfalls]
        if self.random_weights:
            lines.append(RANDOM_WEIGHTS_NOTICE)
        lines += self.next_steps()
        return "\n".join(lines)

    def next_steps(self) -> list[str]:
        """What to run next, with this run's own paths, so the user can copy a line."""
        steps = []
        if self.trial_yaml:
            trial_dir = Path(self.trial_yaml).parent
            steps += [f"  look at the trial    qwen-vla-ros trials view {trial_dir}",
                      f"  report               qwen-vla-ros trials report {trial_dir.parent.parent}",
                      f"  the bag              {self.bag}"]
        steps.append(f"  run it yourself      qwen-vla-ros up aloha --sim --checkpoint {self.checkpoint} --no-joystick")
        if self.logs:
            steps.append(f"  node logs            {self.logs}")
        return ["next:", *steps]

    def as_json(self) -> str:
        return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()})


class Monitor:
    """An in-process rclpy node watching the graph: chunks, commands, sim time, success, diagnostics."""

    def __init__(self, embodiment: EmbodimentConfig) -> None:
        """Watches the first arm's joint states (the sim's clock) and the runtime topics the contract gives a monitor."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from qwen_vla_ros.nodes.ros_contract import create_subscription
        from qwen_vla_ros.ros_env import apply_dds_profile

        apply_dds_profile()
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("qwen_vla_demo", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.counting = False
        self.chunks = 0
        self.command_stamps: list[int] = []
        self.sim_stamp_ns: int | None = None
        self.success = False
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.reports: Counter[str] = Counter()  # diagnostics messages per source, to wait for a fresh one
        self.joint_low: dict[str, float] = {}  # per measured joint, while counting: how far the robot moved
        self.joint_high: dict[str, float] = {}
        self.measured_ns: list[int] = []  # the earliest and latest stamps of the joint states counted
        create_subscription(self.node, ACTION_CHUNK, self._on_chunk)
        create_subscription(self.node, COMMAND, self._on_command, depth=COMMAND_QUEUE_DEPTH)
        watched = {topic.name: topic for topic in role_view(NodeRole.MONITOR, embodiment).subscribes}
        for arm in embodiment.arms:
            create_subscription(self.node, watched[arm.joint_state_topic], partial(self._on_joint_state, arm.name))
        create_subscription(self.node, SIM_SUCCESS, self._on_success)
        create_subscription(self.node, DIAGNOSTICS, self._on_diagnostics)
        self.start_pose_outcomes: list[dict[str, Any]] = []
        create_subscription(self.node, START_POSE, self._on_start_pose)
        self.start_pose_timeout_s = embodiment.start_pose.timeout_s if embodiment.start_pose else None
        self.seen_chunk = False
        self.seen_command = False
        self._thread = threading.Thread(target=self._spin, name="demo_monitor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        from qwen_vla_ros.nodes.common import spin_until_shutdown

        try:
            spin_until_shutdown(self.executor, self.context)
        except (ExternalShutdownException, RuntimeError):  # the context closed under us
            pass

    def sim_time_ns(self) -> int:
        """The sim clock of the last joint state; callers wait for the first one before they ask."""
        if self.sim_stamp_ns is None:
            raise RuntimeError("no joint state from the sim yet, so its clock is unknown")
        return self.sim_stamp_ns

    @staticmethod
    def _stamp(msg: Any) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_chunk(self, msg: Any) -> None:
        self.seen_chunk = True
        if self.counting:
            self.chunks += 1

    def _on_command(self, msg: Any) -> None:
        self.seen_command = True
        if self.counting:
            self.command_stamps.append(self._stamp(msg))

    def _on_joint_state(self, arm: str, msg: Any) -> None:
        self.sim_stamp_ns = self._stamp(msg)
        if not self.counting:
            return
        stamp = self.sim_stamp_ns
        self.measured_ns = [min(stamp, self.measured_ns[0]), max(stamp, self.measured_ns[1])] if self.measured_ns \
            else [stamp, stamp]
        for name, position in zip(msg.name, msg.position, strict=False):  # a short message must not stop the monitor
            key = f"{arm}/{name}"
            self.joint_low[key] = min(position, self.joint_low.get(key, position))
            self.joint_high[key] = max(position, self.joint_high.get(key, position))

    def moved_rad(self) -> float:
        """The largest range any measured joint covered while counting (0 before anything was measured)."""
        return max((self.joint_high[k] - self.joint_low[k] for k in self.joint_low), default=0.0)

    def _on_success(self, msg: Any) -> None:
        self.success = bool(msg.data)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            source = status.name.split(":")[0]
            self.diagnostics[source] = {kv.key: kv.value for kv in status.values}
            self.reports[source] += 1

    def _on_start_pose(self, msg: Any) -> None:
        outcome = json.loads(msg.data)
        self.start_pose_outcomes.append(outcome if isinstance(outcome, dict) else {"unreadable": msg.data})

    def move_to_start(self) -> tuple[bool, str]:
        """Ask the controller for the start pose and wait for its outcome on ``contract.START_POSE``: (arrived,
        the outcome's JSON or why there is none). Between trials the arms then hold there until the trial starts."""
        if self.start_pose_timeout_s is None:
            return False, "the embodiment config has no start_pose"
        seen = len(self.start_pose_outcomes)
        asked, message = self.trigger(MOVE_TO_START)
        if not asked:
            return False, message
        deadline = time.monotonic() + self.start_pose_timeout_s + START_POSE_MARGIN_S
        while len(self.start_pose_outcomes) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.start_pose_outcomes) == seen:
            return False, f"no outcome on {START_POSE.name} after {message}"
        outcome = self.start_pose_outcomes[-1]
        return bool(outcome.get("arrived")), json.dumps(outcome)

    def fresh(self, source: str, timeout_s: float = 2.5 * DIAGNOSTICS_PERIOD_S) -> dict[str, str]:
        """``source``'s next diagnostics after this call (its last one if none comes within ``timeout_s``)."""
        seen = self.reports[source]
        deadline = time.monotonic() + timeout_s
        while self.reports[source] == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.diagnostics.get(source, {})

    def figure(self, source: str, key: str) -> float:
        try:
            return float(self.diagnostics.get(source, {})[key])
        except (KeyError, ValueError):
            return math.nan

    def trigger(self, service: Service, timeout_s: float = 10.0) -> tuple[bool, str]:
        from qwen_vla_ros.nodes.ros_contract import create_client

        client = create_client(self.node, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                return False, f"{service.name} is not offered"
            future = client.call_async(client.srv_type.Request())
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not future.done():
                return False, f"{service.name} did not answer within {timeout_s:g} s"
            result = future.result()
            if result is None:  # the call itself failed (the service went away)
                return False, f"{service.name} failed: {future.exception()}"
            return bool(result.success), str(result.message)
        finally:
            self.node.destroy_client(client)

    def recent_rate(self, span_s: float = 2.0) -> float:
        stamps = self.command_stamps
        if not stamps:
            return math.nan
        recent = [s for s in stamps[-int(span_s * 200):] if s >= stamps[-1] - span_s * 1e9]
        return achieved_rate(recent)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


class Progress:
    """One progress line: rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, stream=sys.stderr, period_s: float = 2.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.period_s = 0.25 if self.tty else period_s
        self._last = 0.0

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.period_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def run_demo(args: argparse.Namespace) -> Summary:
    say = report_to_stderr
    load_runtime(None, dict(parse_override(text) for text in args.runtime_override))  # a bad one: exit 2 now
    checkpoint, random_weights = ensure_checkpoint(args.checkpoint, say=say, random_weights=args.random_weights)
    if random_weights:
        say(RANDOM_WEIGHTS_NOTICE)
    output = Path(args.output).expanduser().resolve()
    logs = run_log_dir(output / "logs")
    options = BringupOptions(EMBODIMENT, str(checkpoint), args.backend, use_sim=True, record=True, joystick=False,
                             instruction=args.instruction, output_dir=str(output),
                             runtime_overrides=args.runtime_override,
                             node_parameters={"sim_node": {"seed": args.seed}, "trial_recorder": {"log_dir": str(logs)}})
    graph = build_graph(options)
    summary = Summary(ok=False, checkpoint=str(checkpoint), random_weights=random_weights,
                      control_rate_target_hz=graph.embodiment.control.rate_hz, logs=str(logs))
    join_graph_dds(graph)
    group = ProcessGroup(graph.processes, echo=None, log_dir=logs)
    monitor = Monitor(graph.embodiment)
    progress = Progress()
    with StopSignals() as signals:
        try:
            say(f"starting nodes: {', '.join(p.name for p in graph.processes)} (logs in {summary.logs})")
            group.start()
            _run_trial(args, group, monitor, signals.event, progress, summary, output)
        finally:
            stop_nodes(group, monitor, summary.problems, say)
    if signals.received is not None:
        summary.problems.append("interrupted")
    summary.judge()
    return summary


def chunk_counters(figures: dict[str, str]) -> dict[str, int]:
    """The controller's chunk counts from its diagnostics: accepted, rejected, dropped and ``rejected_<reason>``."""
    wanted = {"chunks_accepted", "chunks_rejected", "chunks_dropped", *(f"rejected_{r}" for r in REJECTION_REASONS)}
    counts = {}
    for key in wanted & figures.keys():
        try:
            counts[key] = int(float(figures[key]))
        except ValueError:
            continue
    return counts


def count_chunks(summary: Summary, counts: dict[str, int]) -> None:
    """The trial's chunk figures from the difference of the controller's counters over it."""
    summary.chunks_accepted = counts.get("chunks_accepted", 0)
    summary.chunks_rejected = counts.get("chunks_rejected", 0)
    summary.chunks_dropped = counts.get("chunks_dropped", 0)
    summary.rejections = {key.removeprefix("rejected_"): n for key, n in counts.items()
                          if key.startswith("rejected_") and n > 0}
    arrived = summary.chunks_accepted + summary.chunks_rejected + summary.chunks_dropped
    summary.executed_fraction = summary.chunks_accepted / arrived if arrived else math.nan


def _run_trial(args: argparse.Namespace, group: ProcessGroup, monitor: Monitor, stop: threading.Event,
               progress: Progress, summary: Summary, output: Path) -> None:
    problems = summary.problems
    deadline = time.monotonic() + args.startup_timeout
    stages: tuple[tuple[str, Callable[[], bool]], ...] = (
        ("starting nodes", lambda: monitor.sim_stamp_ns is not None),
        ("loading model", lambda: "policy_node" in monitor.diagnostics),  # policy_node reports once loaded
        ("waiting for the first chunk", lambda: monitor.seen_chunk and monitor.seen_command
         and CONTROLLER_STATUS in monitor.diagnostics),
    )
    for what, condition in stages:
        begun = time.monotonic()
        def show(what: str = what, begun: float = begun) -> None:
            progress.show(f"{what} ({time.monotonic() - begun:.0f} s)")

        if not wait_for(condition, group, stop, deadline - time.monotonic(), problems, what, show):
            return
        progress.show(f"{what} ({time.monotonic() - begun:.0f} s)", final=True)
    before = chunk_counters(monitor.fresh(CONTROLLER_STATUS))  # counts up to now, then the trial starts
    started, message = monitor.trigger(TRIAL_SERVICES["trial_start"])
    if not started:
        problems.append(f"the recorder did not start a trial: {message}")
        return
    summary.trial_id = message.split()[0]
    monitor.counting = True
    sim_start_ns = monitor.sim_time_ns()
    wall_start = time.monotonic()
    wall_limit = 3 * args.duration + 30  # the sim keeps real time; far beyond that something is stuck
    while not stop.is_set():
        if dead_required(group, problems):
            break
        summary.sim_time_s = (monitor.sim_time_ns() - sim_start_ns) / 1e9
        inference_ms = monitor.figure("policy_node", "inference_ms_p50")
        progress.show(f"sim {summary.sim_time_s:5.1f}/{args.duration:g} s  chunks {monitor.chunks:4d}  control "
                      f"{monitor.recent_rate():5.1f} Hz  inference p50 {inference_ms:6.1f} ms"
                      f"  success {monitor.success}")
        if summary.sim_time_s >= args.duration:
            break
        if time.monotonic() - wall_start > wall_limit:
            problems.append(f"the sim reached only {summary.sim_time_s:.1f} s in {wall_limit:g} s of wall time")
            break
        time.sleep(0.05)
    progress.show(f"sim {summary.sim_time_s:5.1f} s done", final=True)
    monitor.counting = False
    summary.duration_s = time.monotonic() - wall_start
    summary.success = monitor.success
    # Counted before the stop: after it the arms hold and chunks still in flight are refused as inactive.
    after = chunk_counters(monitor.fresh(CONTROLLER_STATUS))
    stop_service = TRIAL_SERVICES["trial_success" if monitor.success else "trial_failure"]
    stopped, message = monitor.trigger(stop_service)
    if not stopped:
        problems.append(f"the recorder did not stop the trial: {message}")
    summary.moved_rad = monitor.moved_rad()
    summary.moved_between_ns = list(monitor.measured_ns)
    count_chunks(summary, {key: after[key] - before.get(key, 0) for key in after})
    summary.chunks = monitor.chunks
    summary.commands = len(monitor.command_stamps)
    summary.control_rate_hz = achieved_rate(monitor.command_stamps)
    summary.inference_ms_p50 = monitor.figure("policy_node", "inference_ms_p50")
    summary.inference_ms_p99 = monitor.figure("policy_node", "inference_ms_p99")
    summary.real_time_factor = monitor.figure("sim_node", "real_time_factor_total")
    trial_dir = TrialStore(output).trial_dir(summary.trial_id)
    if (trial_dir / TrialStore.RECORD).is_file():
        import yaml

        record = yaml.safe_load((trial_dir / TrialStore.RECORD).read_text())
        summary.outcome = record.get("outcome")
        summary.trial_yaml = str(trial_dir / TrialStore.RECORD)
        summary.bag = str(trial_dir / record.get("bag", "bag"))
    else:
        problems.append(f"no {TrialStore.RECORD} in {trial_dir}")


def _demo(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        raise InvalidArgumentError(f"--duration must be > 0, got {args.duration}")
    summary = run_demo(args)
    print(summary.as_json() if args.json else summary.text(), flush=True)
    return 0 if summary.ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run ALOHA in MuJoCo with the policy, controller and recorder for one trial",
        description="Sim, policy, controller and recorder for ALOHA; one recorded trial; a summary and what to run "
        f"next. Exits 1 when under {MIN_EXECUTED_FRACTION:.0%} of the chunks were executed or none moved the robot. "
        + RANDOM_WEIGHTS_NOTICE,
    )
    parser.add_argument("--checkpoint", default=None,
                        help=f"checkpoint directory (default: the shipped reference checkpoint, "
                        f"{reference_checkpoint_dir()}, where this installation has it)")
    parser.add_argument("--random-weights", action="store_true",
                        help=f"without --checkpoint: a {RANDOM_SIZE} checkpoint with random weights, built once into "
                        f"$XDG_CACHE_HOME/qwen_vla_ros/checkpoints/{RANDOM_SIZE} (the arms move aimlessly)")
    parser.add_argument("-r", "--runtime-override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted runtime-config key for the policy and controller, e.g. "
                        "study.added_delay_s=0.2 (repeatable; docs/configuration.md)")
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds of the trial (20)")
    parser.add_argument("--output", default="~/qwen_vla_trials/demo", help="trials, bags and node logs (%(default)s)")
    parser.add_argument("--instruction", default="", help="task instruction (default: the runtime config's)")
    parser.add_argument("--backend", default="", help="torch | onnxruntime | tensorrt (default: the runtime config's)")
    parser.add_argument("--seed", type=int, default=0, help="sim task randomisation seed (0)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for the first chunk and command (180)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=_demo)
