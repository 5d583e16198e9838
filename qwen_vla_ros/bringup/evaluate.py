"""``qwen-vla-ros eval``: a checkpoint's success over a protocol's conditions, through the ROS graph in MuJoCo.

Brings ALOHA up in simulation with the policy (sim_node, policy_node, the controller,
trial_recorder: the graph ``demo`` runs), the recorder following the protocol. For each trial:
the sim's randomisation is set to the condition's levels (``sim:`` in the protocol), the
instruction to the condition's, the sim is reset, the recorder starts the trial, the policy
acts until the sim reports success or the timeout passes, and the trial is stopped as a
success or failure by the sim's own signal. Then the report ``trials report`` makes (per-factor
success with Wilson 95% intervals, report.md and report.png) is written into the output.

Chunk counts per trial are differences of the controller's diagnostics (published at 1 Hz),
so a chunk that lands within a second of a trial's end may count towards the next trial.
Between trials the sim's reset moves the arms back to the keyframe, but not the controller's
command: the first chunks of a trial start from where the previous trial's plan ended.
"""
from __future__ import annotations

import argparse
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen_vla_ros.bringup.demo import EMBODIMENT, Monitor, chunk_counters, ensure_checkpoint
from qwen_vla_ros.bringup.graph import BringupOptions, build_graph
from qwen_vla_ros.bringup.runner import ProcessGroup, StopSignals, report_to_stderr
from qwen_vla_ros.bringup.session import dead_required, join_graph_dds, stop_nodes, wait_for
from qwen_vla_ros.config import load_runtime, parse_override
from qwen_vla_ros.contract import CONTROLLER_STATUS, INSTRUCTION, SIM_RANDOMIZATION, SIM_RESET, TRIAL_SERVICES
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.recording.protocol import Protocol, load_protocol, next_trial
from qwen_vla_ros.recording.report import build_report, plot, to_markdown, wilson_interval
from qwen_vla_ros.recording.trial import TrialStore, load_index

POLICY_DIAGNOSTICS = "policy_node"


@dataclass
class TrialResult:
    trial_id: str | None
    condition: dict[str, str]
    success: bool
    sim_time_s: float
    chunks_accepted: int
    chunks_rejected: int
    conditions_drawn: dict[str, Any]
    problem: str | None = None


@dataclass
class EvalSummary:
    output: str
    checkpoint: str
    trials: list[TrialResult] = field(default_factory=list)
    per_factor: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    inference_ms_p50: float = math.nan
    inference_ms_p99: float = math.nan
    report: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        judged = [t for t in self.trials if t.problem is None]
        successes = sum(t.success for t in judged)
        number = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        return {
            "trials": len(judged),
            "successes": successes,
            "success_rate": successes / len(judged) if judged else None,
            "wilson_95": list(wilson_interval(successes, len(judged))) if judged else None,
            "per_factor": self.per_factor,
            "chunks_accepted": sum(t.chunks_accepted for t in self.trials),
            "chunks_rejected": sum(t.chunks_rejected for t in self.trials),
            "inference_ms_p50": number(self.inference_ms_p50),
            "inference_ms_p99": number(self.inference_ms_p99),
            "checkpoint": self.checkpoint,
            "output": self.output,
            "report": self.report,
            "per_trial": [asdict(t) for t in self.trials],
            "problems": self.problems,
        }


class ConditionLink:
    """Publishes the sim randomisation (latched) and the instruction, on the monitor's node."""

    def __init__(self, monitor: Monitor) -> None:
        from std_msgs.msg import String

        from qwen_vla_ros.nodes.ros_contract import create_publisher

        self._string = String
        self.randomization = create_publisher(monitor.node, SIM_RANDOMIZATION)
        self.instruction = create_publisher(monitor.node, INSTRUCTION)

    def set(self, fields: dict[str, Any], instruction: str) -> None:
        self.randomization.publish(self._string(data=json.dumps(fields)))
        self.instruction.publish(self._string(data=instruction))


def per_factor(output: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """factor -> level -> trials, successes, rate, wilson_95: the ``trials report`` table as data."""
    report = build_report(load_index(output))
    return {
        factor: {
            stats.label: {"trials": stats.trials, "successes": stats.successes, "rate": stats.rate,
                          "wilson_95": list(stats.interval) if stats.interval else None}
            for stats in levels
        }
        for factor, levels in report.factors.items()
    }


def write_report(output: Path) -> Path:
    report = build_report(load_index(output))
    chart = output / "report.png"
    plot(report, chart)
    markdown = output / "report.md"
    markdown.write_text(to_markdown(report, chart.name), encoding="utf-8")
    return markdown


def _completed(output: Path) -> list[dict[str, str]]:
    if not (output / TrialStore.INDEX).is_file():
        return []
    return [e.condition for e in load_index(output).trials if e.outcome in ("success", "failure")]


def run_eval(args: argparse.Namespace) -> EvalSummary:
    say = report_to_stderr
    load_runtime(None, dict(parse_override(text) for text in args.runtime_override))  # a bad one: exit 2 now
    checkpoint, _ = ensure_checkpoint(args.checkpoint, say=say)
    protocol = load_protocol(args.protocol)
    output = Path(args.output).expanduser().resolve()
    overrides = [f"sim.success={args.success}"] if args.success else []
    options = BringupOptions(
        EMBODIMENT, str(checkpoint), args.backend, use_sim=True, record=True, joystick=False, output_dir=str(output),
        config_overrides=overrides, runtime_overrides=args.runtime_override,
        node_parameters={"sim_node": {"seed": args.seed},
                         "trial_recorder": {"protocol": str(Path(args.protocol).expanduser().resolve())}},
    )
    graph = build_graph(options)
    summary = EvalSummary(str(output), str(checkpoint))
    join_graph_dds(graph)
    group = ProcessGroup(graph.processes, echo=None, log_dir=output / "logs")
    monitor = Monitor(graph.embodiment)
    link = ConditionLink(monitor)
    with StopSignals() as signals:
        try:
            say(f"starting {', '.join(p.name for p in graph.processes)} (logs in {output / 'logs'})")
            group.start()
            ready = lambda: monitor.seen_chunk and monitor.seen_command and monitor.sim_stamp_ns is not None  # noqa: E731
            if wait_for(ready, group, signals.event, args.startup_timeout, summary.problems,
                     "the first chunk and controller command"):
                for number in range(args.trials):
                    if signals.event.is_set() or dead_required(group, summary.problems):
                        break
                    upcoming = next_trial(protocol, _completed(output))
                    if upcoming is None:
                        summary.problems.append(f"the protocol's {len(protocol.schedule())} trials are all done")
                        break
                    result = _trial(args, protocol, upcoming.condition, upcoming.instruction, link, monitor, group,
                                    signals.event)
                    summary.trials.append(result)
                    say(f"trial {number + 1}/{args.trials} {result.trial_id} {result.condition}: "
                        f"{'success' if result.success else 'failure'} after {result.sim_time_s:.1f} s"
                        + (f" ({result.problem})" if result.problem else ""))
            summary.inference_ms_p50 = monitor.figure(POLICY_DIAGNOSTICS, "inference_ms_p50")
            summary.inference_ms_p99 = monitor.figure(POLICY_DIAGNOSTICS, "inference_ms_p99")
        finally:
            stop_nodes(group, monitor, summary.problems, say)
    if signals.received is not None:
        summary.problems.append("interrupted")
    if (output / TrialStore.INDEX).is_file():
        summary.per_factor = per_factor(output)
        summary.report = str(write_report(output))
    return summary


def _trial(args: argparse.Namespace, protocol: Protocol, condition: dict[str, str], instruction: str,
           link: ConditionLink, monitor: Monitor, group: ProcessGroup, stop: threading.Event) -> TrialResult:
    result = TrialResult(None, condition, False, 0.0, 0, 0, {})
    # Every trial starts from the start pose, reached before the reset so that the sim's keyframe (the same
    # pose) does not jump away from the controller's command; the trial record keeps the arrival error.
    arrived, message = monitor.move_to_start()
    if not arrived:
        result.problem = f"the arms did not reach the start pose: {message}"
        return result
    fields = protocol.sim_for(condition)
    link.set(fields, instruction)
    for _ in range(20):  # the latched randomisation reaches the sim asynchronously: the reset echoes it
        time.sleep(0.25)
        reset, message = monitor.trigger(SIM_RESET)
        if not reset:
            result.problem = f"the sim did not reset: {message}"
            return result
        result.conditions_drawn = json.loads(message)
        if result.conditions_drawn.get("randomization") == fields:
            break
    else:
        result.problem = f"the sim never applied the randomisation {fields}"
        return result
    time.sleep(args.settle)
    before = chunk_counters(monitor.fresh(CONTROLLER_STATUS))  # the arms hold until the trial starts: no chunks
    started, message = monitor.trigger(TRIAL_SERVICES["trial_start"])
    if not started:
        result.problem = f"the recorder did not start a trial: {message}"
        return result
    result.trial_id = message.split()[0]
    monitor.success = False  # the latched flag of the previous trial; the sim republishes every period
    sim_start = monitor.sim_time_ns()
    wall_limit = time.monotonic() + 3 * args.timeout + 30
    while not stop.is_set() and not dead_required(group, []):
        result.sim_time_s = (monitor.sim_time_ns() - sim_start) / 1e9
        if monitor.success or result.sim_time_s >= args.timeout or time.monotonic() > wall_limit:
            break
        time.sleep(0.05)
    result.success = monitor.success
    # Counted before the stop: after it the arms hold and the chunks still in flight are refused as inactive.
    after = chunk_counters(monitor.fresh(CONTROLLER_STATUS))
    stopped, message = monitor.trigger(TRIAL_SERVICES["trial_success" if result.success else "trial_failure"])
    if not stopped:
        result.problem = f"the recorder did not stop the trial: {message}"
    if before and after:
        result.chunks_accepted = after.get("chunks_accepted", 0) - before.get("chunks_accepted", 0)
        result.chunks_rejected = after.get("chunks_rejected", 0) - before.get("chunks_rejected", 0)
    return result


def _eval(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise InvalidArgumentError(f"--trials must be >= 1, got {args.trials}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise InvalidArgumentError(f"--timeout must be > 0 seconds, got {args.timeout}")
    summary = run_eval(args)
    data = summary.as_dict()
    if args.json:
        print(json.dumps(data), flush=True)
    else:
        interval = data["wilson_95"]
        print(f"{data['successes']}/{data['trials']} trials succeeded"
              + (f" (Wilson 95% {interval[0]:.2f}-{interval[1]:.2f})" if interval else "")
              + f"; chunks accepted {data['chunks_accepted']}, rejected {data['chunks_rejected']}")
        print(f"report: {summary.report}")
        for problem in summary.problems:
            print(f"  problem: {problem}")
    complete = len(summary.trials) == args.trials and all(t.problem is None for t in summary.trials)
    return 0 if complete and not summary.problems else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint over a protocol's conditions through the ROS graph in MuJoCo",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--protocol", required=True, help="protocol YAML (e.g. config/protocols/aloha_sim_ood.yaml)")
    parser.add_argument("--trials", type=int, required=True, help="trials to run, in the protocol's order")
    parser.add_argument("--output", default="~/qwen_vla_trials/eval", help="trials, bags, logs and report (%(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="simulated seconds a trial may take (30)")
    parser.add_argument("--success", choices=["lifted", "transferred"], default=None,
                        help="the sim's success signal (default: the embodiment config's)")
    parser.add_argument("--backend", default="", help="torch | onnxruntime | tensorrt (default: the runtime config's)")
    parser.add_argument("--seed", type=int, default=0, help="sim randomisation seed (0)")
    parser.add_argument("-r", "--runtime-override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted runtime-config key for the policy and controller, e.g. execution=synchronous "
                        "(repeatable; the execution-strategy study's strategies, docs/evaluation.md)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds between reset and trial start (0.5)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for the first chunk and command (180)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_eval)
