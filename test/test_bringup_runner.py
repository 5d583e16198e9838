"""The process runner with plain child processes (no ROS): reports, escalation, clean shutdown."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from qwen_vla_ros.bringup.graph import ProcessSpec
from qwen_vla_ros.bringup.runner import ProcessGroup, supervise

HELPERS = Path(__file__).resolve().parent / "helpers"


def child(name: str, required: bool = True, **env: str) -> ProcessSpec:
    environment = {f"STUBBORN_{k.upper()}": v for k, v in env.items()}
    return ProcessSpec(name, name, "stubborn_child", {"config": "aloha"}, environment=environment, required=required)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HELPERS)}


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_shutdown_escalates_sigint_sigterm_sigkill(env, tmp_path) -> None:
    lines: list[str] = []
    group = ProcessGroup([child("polite"), child("deaf_to_int", ignore="INT"), child("deaf", ignore="INT,TERM")],
                         env=env, echo=lines.append, log_dir=tmp_path / "logs")
    group.start()
    pids = group.pids()
    assert wait_for(lambda: sum("ready" in line for line in lines) == 3), lines
    started = time.monotonic()
    exits = {e.name: e for e in group.stop(sigint_timeout_s=1.0, sigterm_timeout_s=1.0)}
    assert time.monotonic() - started < 8
    assert exits["polite"].returncode == 0 and exits["polite"].tail[-1] == "interrupted"
    assert exits["deaf_to_int"].returncode == -signal.SIGTERM
    assert exits["deaf"].returncode == -signal.SIGKILL
    assert not any(alive(pid) for pid in pids.values())
    assert any("sending SIGTERM" in line for line in lines) and any("sending SIGKILL" in line for line in lines)
    log = (tmp_path / "logs" / "polite.log").read_text()
    assert "--ros-args" in log and "__node:=polite" in log and "--params-file" in log


def test_a_dead_child_is_reported_with_code_and_tail_and_a_required_one_stops_the_group(env) -> None:
    reports: list[str] = []
    group = ProcessGroup([child("helper", required=False, exit_after="0.2", code="3"), child("steady"),
                          child("crashing", exit_after="1.5", code="7")], env=env, echo=None)
    group.start()
    stop = threading.Event()
    try:
        code = supervise(group, stop, report=reports.append, poll_period_s=0.05)
    finally:
        group.stop(sigint_timeout_s=5.0)
    assert code == 1
    text = "\n".join(reports)
    assert "process helper" in text and "exit code 3" in text, text
    assert "required process crashing" in text and "exit code 7" in text
    assert "  | giving up" in text and "  | line 39" in text, "the tail of the dead child's output"
    assert "shutting down: crashing is required" in text
    assert not any(alive(pid) for pid in group.pids().values())


def test_stop_event_ends_supervision_without_failure(env) -> None:
    group = ProcessGroup([child("steady")], env=env, echo=None)
    group.start()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    try:
        assert supervise(group, stop, report=print, poll_period_s=0.05) == 0
    finally:
        exits = group.stop()
    assert [e.returncode for e in exits] == [0]


def test_another_packages_node_runs_from_the_ros_install_or_is_left_out(env, tmp_path) -> None:
    """A camera driver (realsense2_camera cannot be installed here, so a stand-in script sits
    where a ROS install puts it: ``<prefix>/lib/<package>/<executable>``) runs with its node
    name, namespace and parameters file; with no such install it is reported and left out."""
    driver = ProcessSpec("cam_high_driver", "realsense2_camera_node", "", {"camera_name": "camera"},
                         namespace="cam_high", node_name="camera", required=False, package="realsense2_camera")
    lines: list[str] = []
    group = ProcessGroup([driver, child("steady")], env={**env, "AMENT_PREFIX_PATH": str(tmp_path / "none")},
                         echo=lines.append)
    group.start()
    group.stop(sigint_timeout_s=5.0)
    assert list(group.pids()) == ["steady"]
    assert any("not starting cam_high_driver" in line and "realsense2_camera_node is not installed" in line
               for line in lines), lines

    prefix = tmp_path / "install"
    script = prefix / "lib" / "realsense2_camera" / "realsense2_camera_node"
    script.parent.mkdir(parents=True)
    record = tmp_path / "argv.txt"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {record}\ncat \"$(echo \"$@\" | sed 's/.*--params-file \\([^ ]*\\).*/\\1/')\" >> {record}\n")
    script.chmod(0o755)
    group = ProcessGroup([driver], env={**env, "AMENT_PREFIX_PATH": f"{tmp_path / 'none'}:{prefix}"}, echo=None)
    group.start()
    assert wait_for(lambda: record.exists() and "camera_name" in record.read_text())
    group.stop(sigint_timeout_s=5.0)
    text = record.read_text()
    assert "__node:=camera" in text and "__ns:=/cam_high" in text and "camera_name: camera" in text
