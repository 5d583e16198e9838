"""``qwen-vla-ros up``: bring an embodiment's node graph up without ``ros2 launch``."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from qwen_vla_ros.bringup.demo import RANDOM_SIZE, cache_root
from qwen_vla_ros.bringup.graph import EMBODIMENTS, LAUNCH_ARGUMENTS, BringupOptions, build_graph, parse_namespaces
from qwen_vla_ros.bringup.runner import ProcessGroup, StopSignals, report_to_stderr, shutdown, supervise
from qwen_vla_ros.config import load_runtime, parse_override
from qwen_vla_ros.paths import reference_checkpoint_dir
from qwen_vla_ros.ros_env import dds_notice


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """The launch files' arguments, as options (shared by ``up`` and ``demo``)."""
    parser.add_argument("--checkpoint", default="", help=LAUNCH_ARGUMENTS["checkpoint"][1])
    parser.add_argument("--backend", default="", help=LAUNCH_ARGUMENTS["backend"][1])
    parser.add_argument("--instruction", default="", help=LAUNCH_ARGUMENTS["instruction"][1])
    parser.add_argument("--config", default="", help=LAUNCH_ARGUMENTS["config"][1])
    parser.add_argument("--runtime-config", default="", help=LAUNCH_ARGUMENTS["runtime_config"][1])
    parser.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                        help="embodiment config override for every node (repeatable)")
    parser.add_argument("--runtime-override", action="append", default=[], metavar="KEY=VALUE",
                        help="runtime config override for every node (repeatable)")


def resolve_checkpoint(args: argparse.Namespace, say: Callable[[str], None] = print) -> str:
    """The checkpoint ``up`` passes on: --checkpoint, else the runtime config's, else (with --sim)
    the shipped reference checkpoint, else the demo's cached random checkpoint; with none of
    them a FileNotFoundError that names the flag and the path, before any node starts."""
    if args.checkpoint:
        return args.checkpoint
    overrides = dict(parse_override(text) for text in args.runtime_override)
    if load_runtime(args.runtime_config or None, overrides).checkpoint:
        return ""  # the nodes read it from the runtime config
    shipped = reference_checkpoint_dir()
    if args.sim and (shipped / "qwen_vla.json").is_file():
        say(f"no --checkpoint: using the reference checkpoint {shipped}")
        return str(shipped)
    cached = cache_root() / "checkpoints" / RANDOM_SIZE
    if args.sim and (cached / "qwen_vla.json").is_file():
        say(f"no --checkpoint: using the demo's cached checkpoint {cached} (random weights)")
        return str(cached)
    build = "run `qwen-vla-ros demo --random-weights` once to build one there, or " if args.sim else ""
    raise FileNotFoundError(
        f"no checkpoint: pass --checkpoint DIR (a directory with qwen_vla.json) or set 'checkpoint' in "
        f"--runtime-config; {build}`qwen-vla-ros make-checkpoint --size {RANDOM_SIZE} {cached}` makes a random one there"
        + (", which `up --sim` then uses" if args.sim else ""))


def _up(args: argparse.Namespace) -> int:
    checkpoint = resolve_checkpoint(args)
    options = BringupOptions(
        args.embodiment, checkpoint, args.backend, use_sim=args.sim, record=args.record, joystick=args.joystick,
        config=args.config, instruction=args.instruction, runtime_config=args.runtime_config,
        output_dir=args.output_dir, namespaces=parse_namespaces(args.namespaces), multi_host=args.multi_host,
        security=args.security, config_overrides=args.config_override, runtime_overrides=args.runtime_override,
        configure_robot=args.configure_robot,
        node_parameters={} if args.sim_cameras or not args.sim else {"sim_node": {"camera_rate_hz": 0.0}},
    )
    graph = build_graph(options)
    print(dds_notice({**os.environ, **graph.required_environment}), flush=True)
    if args.security:
        print(f"SROS2: enforced, keystore {args.security}, one enclave per node under /qwen_vla", flush=True)
    with StopSignals() as signals:
        group = ProcessGroup(graph.processes, echo=lambda line: print(line, flush=True))
        try:
            group.start()
            code = supervise(group, signals.event, report=report_to_stderr)
        finally:
            print("stopping " + ", ".join(p.name for p in graph.processes), flush=True)
            shutdown(group, report=report_to_stderr)
    print("all processes stopped", flush=True)
    return code


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start an embodiment's nodes as subprocesses (ros2 launch without ROS tooling)",
        description="Start the same processes as launch/EMBODIMENT.launch.py; Ctrl-C stops them in order. "
        "Exits 1 if a required process dies.",
    )
    parser.add_argument("embodiment", choices=EMBODIMENTS, help="which robot: %(choices)s")
    parser.add_argument("--sim", action="store_true", help=LAUNCH_ARGUMENTS["use_sim"][1])
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True, help=LAUNCH_ARGUMENTS["record"][1])
    parser.add_argument("--joystick", action=argparse.BooleanOptionalAction, default=True, help=LAUNCH_ARGUMENTS["joystick"][1])
    parser.add_argument("--sim-cameras", action=argparse.BooleanOptionalAction, default=True,
                        help="with --sim, render the cameras (--no-sim-cameras: physics only, for a machine without "
                        "EGL or OSMesa; the policy then gets no images)")
    parser.add_argument("--output-dir", default="", help=LAUNCH_ARGUMENTS["output_dir"][1])
    parser.add_argument("--namespaces", default="", help=LAUNCH_ARGUMENTS["namespaces"][1])
    parser.add_argument("--multi-host", action="store_true", help=LAUNCH_ARGUMENTS["multi_host"][1])
    parser.add_argument("--configure-robot", action="store_true", help=LAUNCH_ARGUMENTS["configure_robot"][1])
    parser.add_argument("--security", default="", metavar="KEYSTORE", help=LAUNCH_ARGUMENTS["security"][1])
    add_graph_arguments(parser)
    parser.set_defaults(handler=_up)
