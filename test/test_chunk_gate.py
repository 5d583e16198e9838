"""The chunk gate's hand-off and supervision (qwen_vla_ros.gate), without ROS.

The supervisor tests run a real child process on a real socket connection; the child is a
scripted gate (a few lines speaking the frame protocol, below) rather than
``nodes.chunk_gate``, because what is tested here is the controller's side: credit, death,
restart, stop. The real gate over DDS is tested in test_controller_node.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.gate import (
    NOTICE_DEPTH,
    Backoff,
    BrokenFrameError,
    FrameKind,
    GateFrame,
    GateProcess,
    GateSupervisor,
    NewestChunk,
    decode_frame,
    encode_frame,
)

REPO = Path(__file__).resolve().parent.parent
# The scripted gate: READY on the first credit, then one chunk per credit (stamp = its count),
# exiting with code 3 after ``die_after`` chunks (0: never); or sending garbage, starting slowly
# (1 s) or hanging (60 s) before its first frame, when asked.
SCRIPTED_GATE = """
import os, sys, time
import numpy as np
from multiprocessing.connection import Connection
from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.gate import FrameKind, encode_frame
connection, die_after, mode = Connection(int(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
garbage = mode == "garbage"
sent = 0
if mode == "hang":
    time.sleep(60)
if mode == "slow_start":
    time.sleep(1.0)
try:
    connection.recv_bytes()
    connection.send_bytes(encode_frame(FrameKind.READY, {}))
    while True:
        connection.recv_bytes()
        if die_after and sent >= die_after:
            os._exit(3)
        if garbage:
            connection.send_bytes(b"\\xff" * 3)
            continue
        sent += 1
        chunk = ActionChunk(np.full((2, 2), float(sent)), ("a", "b"), 0.02, sent)
        connection.send_bytes(encode_frame(FrameKind.CHUNK, {"received": sent}, chunk=chunk))
except EOFError:
    pass
"""


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


def scripted_gate(die_after: int = 0, mode: str = "chunks") -> GateProcess:
    parent_end, child_end = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-c", SCRIPTED_GATE, str(child_end.fileno()), str(die_after), mode],
                               pass_fds=(child_end.fileno(),), env=env)
    child_end.close()
    from multiprocessing.connection import Connection

    return GateProcess(process, Connection(parent_end.detach()))


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- frames -----------------------------------------------------------------------------
def test_a_chunk_frame_carries_names_stamp_dt_positions_and_counters() -> None:
    actions = np.array([[0.1, -2.5, 3e-9], [np.nan, np.inf, 7.0]])  # non-finite values pass through: the core judges them
    frame = decode_frame(encode_frame(FrameKind.CHUNK, {"received": 9, "too_large": 2, "malformed": 1, "dropped": 5},
                                      chunk=ActionChunk(actions, ("x", "y", "z"), 0.025, 1_700_000_000_123_456_789)))
    assert frame.kind == FrameKind.CHUNK
    assert frame.counters == {"received": 9, "too_large": 2, "malformed": 1, "dropped": 5}
    chunk = frame.decoded()
    np.testing.assert_array_equal(chunk.actions, actions)
    assert chunk.channel_names == ("x", "y", "z") and chunk.dt == 0.025 and chunk.stamp_ns == 1_700_000_000_123_456_789


def test_an_unstamped_chunk_stays_unstamped_and_notices_carry_size_or_detail() -> None:
    unstamped = decode_frame(encode_frame(FrameKind.CHUNK, {}, chunk=ActionChunk(np.zeros((1, 1)), ("x",), 0.02)))
    assert unstamped.decoded().stamp_ns is None
    too_large = decode_frame(encode_frame(FrameKind.TOO_LARGE, {"too_large": 1}, size_bytes=15_200_000))
    assert too_large.size_bytes == 15_200_000 and too_large.counters["too_large"] == 1
    malformed = decode_frame(encode_frame(FrameKind.MALFORMED, {}, detail="not a serialized JointTrajectory"))
    with pytest.raises(MalformedMessageError, match="not a serialized JointTrajectory"):
        malformed.decoded()


@pytest.mark.parametrize("data", [b"", b"\x02" + b"\x00" * 10, b"\x63" + b"\x00" * 40,
                                  encode_frame(FrameKind.CHUNK, {}, chunk=ActionChunk(np.zeros((2, 2)), ("a", "b"), 0.02))[:-8]])
def test_anything_but_a_whole_frame_is_refused(data: bytes) -> None:
    with pytest.raises(BrokenFrameError):
        decode_frame(data)


# -- the gate's bound -------------------------------------------------------------------
def test_the_outbox_keeps_the_newest_message_and_counts_the_replaced() -> None:
    outbox = NewestChunk()
    for message in (b"first", b"second", b"third"):
        outbox.offer(message, max_bytes=100)
    assert outbox.take(0.0) == b"third"
    assert outbox.take(0.0) is None  # taken: nothing waits
    assert outbox.snapshot() == {"received": 3, "too_large": 0, "malformed": 0, "dropped": 2}


def test_an_oversized_message_is_refused_by_length_and_reported_before_chunks() -> None:
    outbox = NewestChunk()
    outbox.offer(b"ok", max_bytes=10)
    outbox.offer(b"x" * 11, max_bytes=10)
    assert outbox.take(0.0) == (FrameKind.TOO_LARGE, "", 11)
    assert outbox.take(0.0) == b"ok"
    assert outbox.snapshot()["too_large"] == 1


def test_notices_are_bounded_and_counted_beyond_the_bound() -> None:
    outbox = NewestChunk()
    for size in range(11, 11 + NOTICE_DEPTH + 5):
        outbox.offer(b"x" * size, max_bytes=10)
    notices = []
    while (item := outbox.take(0.0)) is not None:
        notices.append(item)
    assert len(notices) == NOTICE_DEPTH and outbox.snapshot()["too_large"] == NOTICE_DEPTH + 5
    assert notices[-1][2] == 11 + NOTICE_DEPTH + 4  # the newest kept


# -- restart backoff --------------------------------------------------------------------
def test_backoff_doubles_for_a_gate_that_keeps_dying_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first_s=0.2, max_s=1.0, stable_s=30.0)
    assert [backoff.delay(ran_s=0.5) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(ran_s=31.0) == 0.2


# -- supervision ------------------------------------------------------------------------
def test_one_frame_per_period_reaches_the_controller_whatever_the_gate_could_send() -> None:
    frames: list[GateFrame] = []
    supervisor = GateSupervisor(scripted_gate, frames.append, Log(), period_s=0.05)
    try:
        supervisor.start()
        assert supervisor.ready.wait(30.0)
        started = time.monotonic()
        time.sleep(1.0)
        elapsed = time.monotonic() - started
    finally:
        supervisor.stop()
    assert 5 <= len(frames) <= elapsed / 0.05 + 2, len(frames)  # credit-bound, not the gate's pace
    assert [f.decoded().stamp_ns for f in frames] == list(range(1, len(frames) + 1))


def test_a_dead_gate_is_logged_counted_and_restarted_after_backoff_and_stop_leaves_no_process() -> None:
    frames: list[GateFrame] = []
    gates: list[GateProcess] = []
    log = Log()

    def start() -> GateProcess:
        gates.append(scripted_gate(die_after=3 if not gates else 0))
        return gates[-1]

    supervisor = GateSupervisor(start, frames.append, log, period_s=0.02, backoff=Backoff(first_s=0.3))
    try:
        supervisor.start()
        assert supervisor.ready.wait(30.0)
        assert wait_for(lambda: supervisor.failures == 1, 10.0)
        died_at = time.monotonic()
        assert len(frames) == 3
        assert wait_for(lambda: supervisor.starts == 2 and len(frames) > 3, 30.0)
        assert time.monotonic() - died_at >= 0.25  # waited the backoff before starting again
        figures = supervisor.figures()
        assert figures["gate_failures"] == 1 and figures["gate_alive"] and figures["gate_pid"] == gates[1].process.pid
    finally:
        supervisor.stop()
    errors = [m for level, m in log.lines if level == "error"]
    assert len(errors) == 1 and "exited with code 3" in errors[0] and f"pid {gates[0].process.pid}" in errors[0], log.lines
    assert all(g.process.poll() is not None for g in gates), "a gate outlived the supervisor"
    assert frames[3].decoded().stamp_ns == 1  # the new gate's first chunk: nothing carried over from the dead one


def test_a_gate_sending_garbage_is_treated_as_failed() -> None:
    log = Log()
    supervisor = GateSupervisor(lambda: scripted_gate(mode="garbage"), lambda frame: None, log, period_s=0.02,
                                backoff=Backoff(first_s=5.0))
    try:
        supervisor.start()
        assert supervisor.ready.wait(30.0)
        assert wait_for(lambda: supervisor.failures == 1, 10.0)
    finally:
        supervisor.stop()
    assert any(level == "error" and "broken frame" in m for level, m in log.lines), log.lines


def test_the_gate_joins_the_controllers_sros2_enclave_and_nothing_else_of_its_arguments() -> None:
    pytest.importorskip("rclpy", reason="rclpy is not installed: nodes.chunk_gate imports it")
    from qwen_vla_ros.nodes.chunk_gate import enclave_args

    argv = ["controller", "--ros-args", "-p", "config:=aloha", "--enclave", "/qwen_vla/aloha_controller", "-r", "a:=b"]
    assert enclave_args(argv) == ["--ros-args", "--enclave", "/qwen_vla/aloha_controller"]
    assert enclave_args(["controller", "--ros-args", "-e", "/x"]) == ["--ros-args", "--enclave", "/x"]
    assert enclave_args(["controller", "--enclave", "/not-a-ros-arg"]) == []
    assert enclave_args(["controller", "--ros-args", "-p", "config:=aloha"]) == []


def test_a_gate_slower_to_start_than_the_silence_limit_is_waited_for_but_a_hung_one_is_not() -> None:
    log = Log()
    slow = GateSupervisor(lambda: scripted_gate(mode="slow_start"), lambda frame: None, log, period_s=0.02,
                          silence_s=0.3, startup_s=30.0)
    try:
        slow.start()
        assert slow.ready.wait(30.0) and slow.failures == 0, log.lines
    finally:
        slow.stop()
    hung = GateSupervisor(lambda: scripted_gate(mode="hang"), lambda frame: None, log, period_s=0.02,
                          silence_s=0.3, startup_s=1.0, backoff=Backoff(first_s=5.0))
    try:
        hung.start()
        assert wait_for(lambda: hung.failures == 1, 20.0)
        gate = hung.gate
    finally:
        hung.stop()
    assert any(level == "error" and "silent for 1 s" in m for level, m in log.lines), log.lines
    assert gate is None or gate.process.poll() is not None


def test_a_bug_handing_a_frame_on_is_not_blamed_on_the_gate(monkeypatch) -> None:
    """Only BrokenFrameError marks the gate as broken: a ValueError raised by the frame's receiver is a
    bug on the controller's side. It ends the reader with its traceback (the controller then holds for
    want of chunks) instead of being logged as a broken gate and hidden by restarts."""
    log = Log()
    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))

    def deliver(frame: GateFrame) -> None:
        raise ValueError("receiver bug")

    supervisor = GateSupervisor(scripted_gate, deliver, log, period_s=0.02, backoff=Backoff(first_s=5.0))
    try:
        supervisor.start()
        assert supervisor.ready.wait(30.0)
        assert wait_for(lambda: bool(raised), 10.0)
    finally:
        supervisor.stop()
    assert isinstance(raised[0], ValueError) and str(raised[0]) == "receiver bug"
    assert supervisor.failures == 0 and not any("broken frame" in m for _, m in log.lines), log.lines
