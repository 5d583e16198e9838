"""``qwen-vla-ros collect``: scripted demonstrations recorded through the real graph.

Brings ALOHA up in simulation with ``expert_node`` in the policy's place (sim_node, the
controller, trial_recorder: the same processes ``demo`` runs), then for each episode: the
controller takes the arms to the config's start pose, the sim is reset (the drawn cube pose
is the expert's only input), the recorder starts a trial, the expert plays the episode as action chunks that the
controller executes, and the trial is stopped as a success or failure by the sim's own
signal. With ``--protocol`` the recorder assigns each trial the protocol's next condition
and the instruction is the condition's.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen_vla_ros.bringup.demo import EMBODIMENT, Monitor
from qwen_vla_ros.bringup.graph import BringupOptions, build_graph
from qwen_vla_ros.bringup.runner import ProcessGroup, StopSignals, report_to_stderr
from qwen_vla_ros.bringup.session import dead_required, join_graph_dds, stop_nodes, wait_for
from qwen_vla_ros.contract import EXPERT_COMMAND, EXPERT_STATUS, INSTRUCTION, SIM_RESET, TRIAL_SERVICES
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.recording.protocol import Protocol, load_protocol, next_trial
from qwen_vla_ros.recording.trial import TrialStore, load_index


@dataclass
class Episode:
    trial_id: str | None
    success: bool
    conditions: dict[str, Any]
    instruction: str
    problem: str | None = None


@dataclass
class CollectSummary:
    output: str
    episodes: list[Episode] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    def as_json(self) -> str:
        return json.dumps({"output": self.output, "episodes": len(self.episodes), "successes": self.successes,
                           "trials": [asdict(e) for e in self.episodes], "problems": self.problems})


class ExpertLink:
    """The collect side of the expert's JSON topics, on the monitor's node."""

    def __init__(self, monitor: Monitor) -> None:
        from std_msgs.msg import String

        from qwen_vla_ros.nodes.ros_contract import create_publisher, create_subscription

        self._string = String
        self.statuses: dict[int, dict[str, Any]] = {}
        self.ready = False  # the expert announces itself (latched) once it is up
        self._next_id = int(time.time() * 1000)  # distinct from a previous run's latched status
        node = monitor.node
        self.commands = create_publisher(node, EXPERT_COMMAND)
        self.instruction = create_publisher(node, INSTRUCTION)
        create_subscription(node, EXPERT_STATUS, self._on_status)

    def _on_status(self, message: Any) -> None:
        status = json.loads(message.data)
        self.ready = True
        if isinstance(status.get("id"), int):
            self.statuses[status["id"]] = status

    def send(self, command: dict[str, Any]) -> int:
        self._next_id += 1
        self.commands.publish(self._string(data=json.dumps({"id": self._next_id, **command})))
        return self._next_id

    def state(self, command_id: int) -> str | None:
        return self.statuses.get(command_id, {}).get("state")

    def say(self, instruction: str) -> None:
        self.instruction.publish(self._string(data=instruction))


def _instruction(protocol: Protocol | None, output: Path, default: str) -> str:
    """The instruction of the condition the recorder will assign next (the protocol's walk)."""
    if protocol is None:
        return default
    index_path = output / TrialStore.INDEX
    completed = [e.condition for e in load_index(output).trials if e.outcome in ("success", "failure")] \
        if index_path.is_file() else []
    upcoming = next_trial(protocol, completed)
    return upcoming.instruction if upcoming else protocol.instruction or default


def _run_command(link: ExpertLink, command: dict[str, Any], group: ProcessGroup, stop: threading.Event,
                 problems: list[str], timeout_s: float) -> bool:
    command_id = link.send(command)
    what = f"the expert's {command['command']} (id {command_id})"
    if not wait_for(lambda: link.state(command_id) in ("done", "error"), group, stop, timeout_s, problems, what):
        return False
    if link.state(command_id) == "error":
        problems.append(f"{what} was refused: {link.statuses[command_id].get('detail')}")
        return False
    return True


def run_collect(args: argparse.Namespace) -> CollectSummary:
    say = report_to_stderr
    output = Path(args.output).expanduser().resolve()
    protocol = load_protocol(args.protocol) if args.protocol else None
    recorder: dict[str, Any] = {"protocol": str(Path(args.protocol).expanduser().resolve())} if protocol else {}
    options = BringupOptions(
        EMBODIMENT, use_sim=True, record=True, joystick=False, output_dir=str(output), command_source="expert",
        config_overrides=[f"sim.success={args.success}"],
        node_parameters={"sim_node": {"seed": args.seed}, "trial_recorder": recorder},
    )
    graph = build_graph(options)
    summary = CollectSummary(str(output))
    join_graph_dds(graph)
    group = ProcessGroup(graph.processes, echo=None, log_dir=output / "logs")
    monitor = Monitor(graph.embodiment)
    link = ExpertLink(monitor)
    with StopSignals() as signals:
        try:
            say(f"starting {', '.join(p.name for p in graph.processes)} (logs in {output / 'logs'})")
            group.start()
            ready = lambda: monitor.sim_stamp_ns is not None and monitor.seen_command and link.ready  # noqa: E731
            if wait_for(ready, group, signals.event, args.startup_timeout, summary.problems,
                     "the sim's joint states, the controller's commands and the expert"):
                for number in range(args.episodes):
                    if signals.event.is_set() or dead_required(group, summary.problems):
                        break
                    episode = _episode(args, link, monitor, group, signals.event, protocol, output)
                    summary.episodes.append(episode)
                    say(f"episode {number + 1}/{args.episodes}: {episode.trial_id} "
                        f"{'success' if episode.success else 'failure'}"
                        + (f" ({episode.problem})" if episode.problem else ""))
        finally:
            stop_nodes(group, monitor, summary.problems, say)
    if signals.received is not None:
        summary.problems.append("interrupted")
    return summary


def _episode(args: argparse.Namespace, link: ExpertLink, monitor: Monitor, group: ProcessGroup,
             stop: threading.Event, protocol: Protocol | None, output: Path) -> Episode:
    problems: list[str] = []
    instruction = _instruction(protocol, output, args.instruction)
    episode = Episode(None, False, {}, instruction)
    # The start pose first (the controller's, as for an evaluation's trials): a reset moves the sim's arms to
    # the same pose, not the controller's command, and the arms hold there until the trial starts.
    arrived, message = monitor.move_to_start()
    if not arrived:
        episode.problem = f"the arms did not reach the start pose: {message}"
        return episode
    reset, message = monitor.trigger(SIM_RESET)
    if not reset:
        episode.problem = f"the sim did not reset: {message}"
        return episode
    episode.conditions = json.loads(message)
    pose = episode.conditions["object_pose"]
    # Plan before the trial starts, so the recording begins with the motion, not with planning.
    if not _run_command(link, {"command": "plan", "object_position": pose[:3]}, group, stop, problems, 60.0):
        episode.problem = "; ".join(problems)
        return episode
    link.say(instruction)
    time.sleep(0.2)  # the instruction reaches the recorder
    started, message = monitor.trigger(TRIAL_SERVICES["trial_start"])
    if not started:
        episode.problem = f"the recorder did not start a trial: {message}"
        return episode
    episode.trial_id = message.split()[0]
    played = _run_command(link, {"command": "play"}, group, stop, problems, args.episode_timeout)
    time.sleep(0.3)  # the last success flag arrives
    episode.success = played and monitor.success
    stopped, message = monitor.trigger(TRIAL_SERVICES["trial_success" if episode.success else "trial_failure"])
    if not stopped:
        problems.append(f"the recorder did not stop the trial: {message}")
    episode.problem = "; ".join(problems) or None
    return episode


def _collect(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise InvalidArgumentError(f"--episodes must be >= 1, got {args.episodes}")
    summary = run_collect(args)
    if args.json:
        print(summary.as_json(), flush=True)
    else:
        print(f"{summary.successes}/{len(summary.episodes)} episodes succeeded; trials in {summary.output}")
        for problem in summary.problems:
            print(f"  problem: {problem}")
    return 0 if not summary.problems and len(summary.episodes) == args.episodes else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect", help="record scripted transfer-cube demonstrations through the ROS graph in MuJoCo",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--episodes", type=int, required=True, help="episodes to record (one trial each)")
    parser.add_argument("--protocol", default=None, help="OOD protocol YAML: the recorder assigns its conditions")
    parser.add_argument("--output", required=True, help="trial_recorder output directory (trials, bags, logs)")
    parser.add_argument("--seed", type=int, default=0, help="sim randomisation seed (0)")
    parser.add_argument("--success", choices=["transferred", "lifted"], default="transferred",
                        help="the sim's success signal that labels each trial (transferred)")
    parser.add_argument("--instruction", default="pick up the cube with the right arm and hand it to the left arm",
                        help="instruction recorded with each trial when no protocol sets one")
    parser.add_argument("--episode-timeout", type=float, default=60.0, help="wall seconds per episode (60)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the graph (120)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=_collect)
