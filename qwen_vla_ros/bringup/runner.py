"""Start a node graph as plain subprocesses, watch them, and shut them down in order.

``qwen-vla-ros up`` on a bare machine does what ``ros2 launch`` does on a robot computer:
one ``python -m qwen_vla_ros.nodes.<node> --ros-args ...`` per process of the graph
description. A child that dies is reported with its exit code and the tail of its output;
a required one takes the graph down (like launch's ``on_exit=Shutdown``). Shutdown sends
SIGINT (rclpy's clean exit), then SIGTERM, then SIGKILL, each after a timeout.

No rclpy import: the runner must work before any DDS participant exists.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

import qwen_vla_ros
from qwen_vla_ros.bringup.graph import ProcessSpec
from qwen_vla_ros.ros_env import dds_environment

PACKAGE_ROOT = Path(qwen_vla_ros.__file__).resolve().parent.parent
TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Exit:
    """A child that ended: while the graph ran (``unexpected``) or during shutdown."""

    name: str
    pid: int
    returncode: int
    required: bool
    unexpected: bool
    tail: tuple[str, ...]

    def describe(self) -> str:
        how = f"killed by {signal.Signals(-self.returncode).name}" if self.returncode < 0 else f"exit code {self.returncode}"
        kind = "required process" if self.required else "process"
        lines = [f"{kind} {self.name} (pid {self.pid}) died: {how}"]
        if self.tail:
            lines.append(f"  last {len(self.tail)} lines of its output:")
            lines += [f"  | {line}" for line in self.tail]
        return "\n".join(lines)


def child_environment(spec: ProcessSpec, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the spec's defaults (a variable already set wins), its required variables
    (the DDS mode and SROS2, always), the DDS profile and discovery range of that mode, and
    this very package on the import path."""
    env = dict(base)
    for key, value in spec.environment.items():
        env.setdefault(key, value)
    env.update(spec.required_environment)
    env.update(dds_environment(env))  # for another package's node too, which never runs apply_dds_profile
    env["PYTHONUNBUFFERED"] = "1"  # output tails must be current when a child dies
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def _die_with_parent() -> None:
    """Children get SIGTERM if the runner itself is killed, so no node outlives it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: shutdown still ends them unless the runner is killed
        pass


class _Child:
    def __init__(self, spec: ProcessSpec, popen: subprocess.Popen, log: TextIO | None,
                 echo: Callable[[str], None] | None) -> None:
        self.spec = spec
        self.popen = popen
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.reported = False
        self._log = log
        self._echo = echo
        self.reader = threading.Thread(target=self._read, name=f"output_{spec.name}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if self._log is not None:
                self._log.write(raw)
                self._log.flush()
            if self._echo is not None:
                self._echo(f"[{self.spec.name}] {line}")

    def exit(self, unexpected: bool) -> Exit:
        self.reader.join(timeout=2.0)  # the rest of the output, now that the pipe is closed
        self.reported = True
        return Exit(self.spec.name, self.popen.pid, self.popen.returncode, self.spec.required, unexpected,
                    tuple(self.tail))


def ros_executable(package: str, executable: str, env: Mapping[str, str]) -> Path | None:
    """Where ``ros2 run package executable`` would find it: ``<prefix>/lib/<package>/`` of a sourced install."""
    for prefix in filter(None, env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_log_dir(root: Path, now: float | None = None) -> Path:
    """A new folder under ``root`` for one run's node logs, named by its start time, so a later
    run never overwrites the logs a recorded trial points to."""
    name = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate, suffix = root / name, 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{name}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


class ProcessGroup:
    """The processes of one graph. Use as a context manager: leaving it always shuts down."""

    def __init__(
        self,
        processes: Iterable[ProcessSpec],
        *,
        env: Mapping[str, str] | None = None,
        echo: Callable[[str], None] | None = print,
        log_dir: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.specs = list(processes)
        self.env = dict(os.environ if env is None else env)
        self.echo = echo
        self.log_dir = log_dir
        self.python = python
        self.children: list[_Child] = []
        self._logs: list[TextIO] = []
        self._params = tempfile.TemporaryDirectory(prefix="qwen_vla_params_")

    def command(self, spec: ProcessSpec) -> list[str] | None:
        """The command line, or None for another package's executable that is not installed."""
        if spec.module:
            program = [self.python, "-m", spec.module]
        else:
            found = ros_executable(spec.package, spec.executable, self.env)
            if found is None:
                return None
            program = [str(found)]
        params_file = Path(self._params.name) / f"{spec.name}.yaml"
        params_file.write_text(yaml.safe_dump(spec.parameters_yaml(), sort_keys=False))
        return [*program, *spec.ros_arguments(str(params_file))]

    def start(self) -> None:
        for spec in self.specs:
            command = self.command(spec)
            if command is None:
                self._say(f"not starting {spec.name}: {spec.package}'s {spec.executable} is not installed "
                          f"(none under AMENT_PREFIX_PATH); install it or set the camera's driver to 'none'")
                continue
            log = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log = open(self.log_dir / f"{spec.name}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
                self._logs.append(log)
            popen = subprocess.Popen(
                command, env=child_environment(spec, self.env), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                start_new_session=True,  # a terminal's Ctrl-C reaches the runner only; it stops them in order
                preexec_fn=_die_with_parent,
            )
            self.children.append(_Child(spec, popen, log, self.echo))
            self._say(f"started {spec.name} (pid {popen.pid}): {f'python -m {spec.module}' if spec.module else command[0]}")

    def pids(self) -> dict[str, int]:
        return {child.spec.name: child.popen.pid for child in self.children}

    def poll(self) -> list[Exit]:
        """Children that ended since the last poll."""
        return [child.exit(unexpected=True) for child in self.children
                if not child.reported and child.popen.poll() is not None]

    def stop(self, sigint_timeout_s: float = 10.0, sigterm_timeout_s: float = 5.0) -> list[Exit]:
        """SIGINT every live child, SIGTERM those still alive after the timeout, then SIGKILL."""
        for signum, timeout in ((signal.SIGINT, sigint_timeout_s), (signal.SIGTERM, sigterm_timeout_s),
                                (signal.SIGKILL, 10.0)):
            alive = [c for c in self.children if c.popen.poll() is None]
            if not alive:
                break
            if signum != signal.SIGINT:
                self._say(f"{', '.join(c.spec.name for c in alive)} still running: sending {signum.name}")
            for child in alive:
                child.popen.send_signal(signum)
            deadline = time.monotonic() + timeout
            for child in alive:
                try:
                    child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        exits = [child.exit(unexpected=False) for child in self.children if not child.reported]
        for log in self._logs:
            log.close()
        self._params.cleanup()
        return exits

    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def __enter__(self) -> ProcessGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if any(c.popen.poll() is None or not c.reported for c in self.children):
            self.stop()


class StopSignals:
    """SIGINT and SIGTERM set an event instead of raising, while the context is active."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        self.event.set()

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def report_to_stderr(text: str) -> None:
    """Progress and reports of the bringup commands: on stderr, so stdout stays for results (JSON)."""
    print(text, file=sys.stderr, flush=True)


def supervise(group: ProcessGroup, stop: threading.Event, report: Callable[[str], None] = print,
              poll_period_s: float = 0.2) -> int:
    """Watch ``group`` until ``stop`` is set or a required process dies; 0 or 1 (a required one died)."""
    failed = False
    while not stop.is_set():
        for ended in group.poll():
            report(ended.describe())
            if ended.required:
                report(f"shutting down: {ended.name} is required")
                failed = True
        if failed:
            break
        stop.wait(poll_period_s)
    return 1 if failed else 0


def shutdown(group: ProcessGroup, report: Callable[[str], None] = print) -> None:
    """Stop the group and report any child that did not end cleanly."""
    for ended in group.stop():
        if ended.returncode not in (0, -signal.SIGINT):
            report(ended.describe())
