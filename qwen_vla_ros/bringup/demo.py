"""``qwen-vla-ros demo``: the whole loop on a bare machine, in MuJoCo, in one command.

Brings ALOHA up in simulation (sim, policy, controller, recorder) through the runner, runs one
recorded trial for a given span of simulated time with a progress line, stops it (labelled by
the sim's success flag), shuts everything down and prints what happened. With no
``--checkpoint`` it builds a small random checkpoint once and caches it.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen_vla_ros.bringup.graph import BringupOptions, build_graph
from qwen_vla_ros.bringup.runner import ProcessGroup, StopSignals, report_to_stderr, run_log_dir
from qwen_vla_ros.bringup.session import dead_required, join_graph_dds, stop_nodes, wait_for
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.contract import (
    ACTION_CHUNK,
    COMMAND,
    DIAGNOSTICS,
    SIM_SUCCESS,
    TRIAL_SERVICES,
    NodeRole,
    Service,
    role_view,
)
from qwen_vla_ros.recording.trial import TrialStore

EMBODIMENT = "aloha"
COMMAND_QUEUE_DEPTH = 100  # every command is counted for the achieved rate: a deep queue drops none
RANDOM_WEIGHTS_NOTICE = (
    "The demo's default checkpoint has RANDOM weights (Qwen-VLA's weights are not public): the arms move aimlessly "
    "but safely, inside the controller's position, velocity and acceleration limits. To run real weights, "
    "pass --checkpoint DIR with a checkpoint directory in the same layout (backbone/, action_head.safetensors, "
    "qwen_vla.json; see docs/model.md)."
)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen_vla_ros"


def ensure_checkpoint(path: str | None, size: str = "small", say: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(checkpoint directory, whether it has random weights built here).

    A given path must hold a checkpoint; otherwise a ``size`` random checkpoint is built once
    into the per-user cache (written beside and renamed, so an interrupted build is redone).
    """
    if path:
        root = Path(path).expanduser()
        if not (root / "qwen_vla.json").is_file():
            raise FileNotFoundError(f"{root} is not a checkpoint directory (no qwen_vla.json)")
        return root, False
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

    def text(self) -> str:
        def number(value: float, unit: str = "") -> str:
            return "n/a" if math.isnan(value) else f"{value:.1f}{unit}"

        lines = [
            "demo " + ("finished" if self.ok else "FAILED"),
            f"  trial              {self.trial_id} ({self.outcome}), {self.sim_time_s:.1f} s simulated",
            f"  chunks published   {self.chunks}",
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
        create_subscription(self.node, ACTION_CHUNK, self._on_chunk)
        create_subscription(self.node, COMMAND, self._on_command, depth=COMMAND_QUEUE_DEPTH)
        watched = {topic.name: topic for topic in role_view(NodeRole.MONITOR, embodiment).subscribes}
        create_subscription(self.node, watched[embodiment.arms[0].joint_state_topic], self._on_joint_state)
        create_subscription(self.node, SIM_SUCCESS, self._on_success)
        create_subscription(self.node, DIAGNOSTICS, self._on_diagnostics)
        self.seen_chunk = False
        self.seen_command = False
        self._thread = threading.Thread(target=self._spin, name="demo_monitor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.1)
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

    def _on_joint_state(self, msg: Any) -> None:
        self.sim_stamp_ns = self._stamp(msg)

    def _on_success(self, msg: Any) -> None:
        self.success = bool(msg.data)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            self.diagnostics[status.name.split(":")[0]] = {kv.key: kv.value for kv in status.values}

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
    checkpoint, random_weights = ensure_checkpoint(args.checkpoint, say=say)
    if random_weights:
        say(RANDOM_WEIGHTS_NOTICE)
    output = Path(args.output).expanduser().resolve()
    logs = run_log_dir(output / "logs")
    options = BringupOptions(EMBODIMENT, str(checkpoint), args.backend, use_sim=True, record=True, joystick=False,
                             instruction=args.instruction, output_dir=str(output),
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
    summary.ok = not summary.problems and summary.chunks > 0 and summary.trial_yaml is not None
    return summary


def _run_trial(args: argparse.Namespace, group: ProcessGroup, monitor: Monitor, stop: threading.Event,
               progress: Progress, summary: Summary, output: Path) -> None:
    problems = summary.problems
    deadline = time.monotonic() + args.startup_timeout
    stages: tuple[tuple[str, Callable[[], bool]], ...] = (
        ("starting nodes", lambda: monitor.sim_stamp_ns is not None),
        ("loading model", lambda: "policy_node" in monitor.diagnostics),  # policy_node reports once loaded
        ("waiting for the first chunk", lambda: monitor.seen_chunk and monitor.seen_command),
    )
    for what, condition in stages:
        begun = time.monotonic()
        def show(what: str = what, begun: float = begun) -> None:
            progress.show(f"{what} ({time.monotonic() - begun:.0f} s)")

        if not wait_for(condition, group, stop, deadline - time.monotonic(), problems, what, show):
            return
        progress.show(f"{what} ({time.monotonic() - begun:.0f} s)", final=True)
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
    stop_service = TRIAL_SERVICES["trial_success" if monitor.success else "trial_failure"]
    stopped, message = monitor.trigger(stop_service)
    if not stopped:
        problems.append(f"the recorder did not stop the trial: {message}")
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
        raise ValueError(f"--duration must be > 0, got {args.duration}")
    summary = run_demo(args)
    print(summary.as_json() if args.json else summary.text(), flush=True)
    return 0 if summary.ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run ALOHA in MuJoCo with the policy, controller and recorder for one trial",
        description="Sim, policy, controller and recorder for ALOHA; one recorded trial; a summary and what to run "
        "next. " + RANDOM_WEIGHTS_NOTICE,
    )
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint directory (default: a small random one, built once into "
                        "$XDG_CACHE_HOME/qwen_vla_ros/checkpoints/small)")
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds of the trial (20)")
    parser.add_argument("--output", default="~/qwen_vla_trials/demo", help="trials, bags and node logs (%(default)s)")
    parser.add_argument("--instruction", default="", help="task instruction (default: the runtime config's)")
    parser.add_argument("--backend", default="", help="torch | onnxruntime | tensorrt (default: the runtime config's)")
    parser.add_argument("--seed", type=int, default=0, help="sim task randomisation seed (0)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for the first chunk and command (180)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=_demo)
