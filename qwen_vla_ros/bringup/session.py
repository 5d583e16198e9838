"""What the bringup commands (``demo``, ``collect``, ``eval``) share while they drive a graph.

Each starts the nodes as a :class:`~qwen_vla_ros.bringup.runner.ProcessGroup`, watches them
from this process through an rclpy monitor node, waits on conditions while a required node
may die, and stops everything at the end. Those steps live here, once; what each command
does in between stays in its own module.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from qwen_vla_ros.bringup.graph import Graph
from qwen_vla_ros.bringup.runner import ProcessGroup

WAIT_POLL_S = 0.1


class Closable(Protocol):
    def close(self) -> None: ...


def join_graph_dds(graph: Graph) -> None:
    """This process (the monitor) joins the DDS setup of the nodes it starts: their RMW, and in
    single-host mode the confined profile its own ``apply_dds_profile`` then picks too."""
    for key, value in graph.environment.items():
        os.environ.setdefault(key, value)
    os.environ.update(graph.required_environment)


def dead_required(group: ProcessGroup, problems: list[str]) -> bool:
    """Whether a required node has ended; every node that ended since the last look goes into ``problems``."""
    exits = group.poll()
    for ended in exits:
        problems.append(ended.describe())
    return any(e.required for e in exits)


def wait_for(condition: Callable[[], bool], group: ProcessGroup, stop: threading.Event, timeout_s: float,
             problems: list[str], what: str, tick: Callable[[], None] = lambda: None) -> bool:
    """Poll ``condition`` until it holds (True), or until a required node dies, ``stop`` is set or
    ``timeout_s`` passes (False; a timeout is added to ``problems`` naming ``what``).
    ``tick`` runs between polls (a progress line)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        if dead_required(group, problems):
            return False
        if condition():
            return True
        tick()
        time.sleep(WAIT_POLL_S)
    if not stop.is_set():
        problems.append(f"{what}: not done within the start-up timeout (--startup-timeout, the node logs say why)")
    return False


def stop_nodes(group: ProcessGroup, monitor: Closable, problems: list[str], say: Callable[[str], None]) -> None:
    """Stop every node (SIGINT first), record those that ended badly (SIGINT's -2 is the clean end), then the monitor."""
    say("stopping the nodes")
    for ended in group.stop():
        if ended.returncode not in (0, -2):
            problems.append(ended.describe())
    monitor.close()
