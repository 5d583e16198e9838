"""The ``qwen-vla-ros`` command.

Each subcommand lives beside the code it drives and registers itself through an
``add_parser(subparsers)`` function; this module only wires them together and maps
expected failures (bad config, missing checkpoint) to exit code 2 with a clear message.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qwen_vla_ros import __version__
from qwen_vla_ros.bringup.cli import add_parser as _add_up
from qwen_vla_ros.bringup.collect import add_parser as _add_collect
from qwen_vla_ros.bringup.demo import add_parser as _add_demo
from qwen_vla_ros.bringup.evaluate import add_parser as _add_eval
from qwen_vla_ros.bringup.security import add_parser as _add_security
from qwen_vla_ros.config import ConfigError, parse_override, validate_config
from qwen_vla_ros.config.loader import apply_overrides, read_yaml, validate
from qwen_vla_ros.config.summary import summarize
from qwen_vla_ros.contract_tables import add_parser as _add_contract
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.interfaces import build as build_interfaces
from qwen_vla_ros.model.commands import add_bench_parser, add_export_parser, add_make_checkpoint_parser
from qwen_vla_ros.model.train_command import add_parser as _add_train
from qwen_vla_ros.recording.cli import add_parser as _add_trials
from qwen_vla_ros.recording.protocol import Protocol, is_protocol, summarize_protocol

EXIT_BAD_INPUT = 2
DESCRIPTION = (
    "Run the Qwen-VLA vision-language-action policy on ROS 2 robots (ALOHA, WidowX, mobile bases): "
    "try the whole loop in simulation (demo), bring an embodiment up (up), record and report evaluation "
    "trials (trials), build, export and benchmark checkpoints, and check config files."
)


def _check_file(path: str, overrides: Mapping[str, Any]) -> tuple[str, str]:
    """Validate one embodiment, runtime or protocol file; its model name and summary.

    Protocols belong to recording, a layer above config, so they are told apart here.
    """
    source = Path(path).expanduser()
    data = read_yaml(source)
    if is_protocol(data):
        protocol = validate(Protocol, apply_overrides(data, overrides, str(source)), str(source), overrides)
        return type(protocol).__name__, summarize_protocol(protocol)
    config = validate_config(data, str(source), overrides)
    return type(config).__name__, summarize(config)


def _check_config(args: argparse.Namespace) -> int:
    failed = 0
    overrides = dict(parse_override(text) for text in args.override)
    for path in args.files:
        try:
            kind, summary = _check_file(path, overrides)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: OK ({kind})")
        print(summary)
        print()
    return EXIT_BAD_INPUT if failed else 0


def _add_check_config(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check-config", help="validate embodiment, runtime or OOD protocol YAML files")
    parser.add_argument("files", nargs="+", help="YAML files to validate")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="dotted key set before validation, as a node's config_overrides (repeatable)",
    )
    parser.set_defaults(handler=_check_config)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_check_config,
    add_make_checkpoint_parser,
    add_bench_parser,
    add_export_parser,
    _add_trials,
    build_interfaces.add_parser,
    _add_up,
    _add_demo,
    _add_security,
    _add_contract,
    _add_collect,
    _add_eval,
    _add_train,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-vla-ros", description=DESCRIPTION,
                                     epilog="Start with `qwen-vla-ros demo`; each command has its own --help.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (QwenVlaError, FileNotFoundError, ImportError) as exc:  # bad input or config, a missing file or extra
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
