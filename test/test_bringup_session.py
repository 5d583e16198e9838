"""The bringup commands' shared steps (bringup.session) with plain child processes (no ROS):
waiting on a condition while required nodes may die, and stopping the nodes."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from qwen_vla_ros.bringup.graph import ProcessSpec
from qwen_vla_ros.bringup.runner import ProcessGroup
from qwen_vla_ros.bringup.session import stop_nodes, wait_for

HELPERS = Path(__file__).resolve().parent / "helpers"


def child(name: str, required: bool = True, **env: str) -> ProcessSpec:
    environment = {f"STUBBORN_{k.upper()}": v for k, v in env.items()}
    return ProcessSpec(name, name, "stubborn_child", {"config": "aloha"}, environment=environment, required=required)


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HELPERS)}


class Closed:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_dead_required_node_ends_the_wait_at_once_and_is_named(env, tmp_path) -> None:
    group = ProcessGroup([child("dies", exit_after="0.3", code="3"), child("lives")], env=env, echo=None,
                         log_dir=tmp_path)
    group.start()
    problems: list[str] = []
    try:
        started = time.monotonic()
        assert not wait_for(lambda: False, group, threading.Event(), 30.0, problems, "never")
        assert time.monotonic() - started < 15, "the wait ended with the node, not at its timeout"
    finally:
        stop_nodes(group, Closed(), problems, lambda _: None)
    assert len(problems) == 1 and "required process dies" in problems[0] and "exit code 3" in problems[0], problems


def test_an_optional_node_ending_is_named_but_the_wait_goes_on(env, tmp_path) -> None:
    group = ProcessGroup([child("optional", required=False, exit_after="0.2", code="4"), child("lives")], env=env,
                         echo=None, log_dir=tmp_path)
    group.start()
    problems: list[str] = []
    begun = time.monotonic()
    try:
        assert wait_for(lambda: time.monotonic() - begun > 3.0, group, threading.Event(), 30.0, problems, "three s")
    finally:
        stop_nodes(group, Closed(), problems, lambda _: None)
    assert len(problems) == 1 and "process optional" in problems[0] and "exit code 4" in problems[0], problems


def test_a_timeout_is_a_problem_naming_what_was_awaited_but_a_stop_is_not(env, tmp_path) -> None:
    group = ProcessGroup([child("lives")], env=env, echo=None, log_dir=tmp_path)
    group.start()
    problems: list[str] = []
    stop = threading.Event()
    monitor = Closed()
    try:
        assert not wait_for(lambda: False, group, stop, 0.3, problems, "the first chunk")
        assert len(problems) == 1 and problems[0].startswith("the first chunk: not done"), problems
        stop.set()
        assert not wait_for(lambda: False, group, stop, 30.0, problems, "after the stop")
        assert len(problems) == 1, "a requested stop is no problem"
    finally:
        stop_nodes(group, monitor, problems, lambda _: None)
    assert len(problems) == 1, "SIGINT's clean end is no problem either"
    assert monitor.closed
