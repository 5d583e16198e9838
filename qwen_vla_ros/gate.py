"""The chunk gate's hand-off and supervision, without ROS.

The controller receives action chunks in a process of its own, the chunk gate
(``nodes.chunk_gate``), so that no chunk, however large, is ever copied by the controller's
interpreter (docs/architecture.md, chunk intake, for why). This module is what both sides
share and what decides, with no ROS in it:

- **Frames.** What the gate hands over: a decoded chunk (names, stamp, dt, positions), a
  notice that a message was refused by its size or could not be decoded, or only its
  counters. Every frame carries the gate's counters, so they reach the controller's
  diagnostics without a frame of their own.
- **NewestChunk**, the gate's bound: it keeps the newest raw chunk message (decoding waits
  until the controller asks for one, so a flood is never decoded in full) and a few notices,
  and counts what it pushes out.
- **Credit.** The gate sends one frame per credit, and the controller grants one credit a
  control period: at most one frame is in flight, so whatever reaches the controller is the
  newest the gate had, and its work is bounded by its own rate, not the traffic's.
- **GateSupervisor**, the controller's side: reads frames on a thread of its own, hands them
  on, notices a gate that exits, closes its connection or goes silent, logs and counts it,
  and starts a new one after a :class:`Backoff` delay.
"""
from __future__ import annotations

import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.errors import MalformedMessageError, QwenVlaError
from qwen_vla_ros.log import Logger

CREDIT = b"c"
EXIT_WAIT_S = 0.5  # a gate whose connection ended is usually exiting: wait this long to report its code
NOTICE_DEPTH = 8  # refusals waiting to be reported; more are only counted
COUNTERS = ("received", "too_large", "malformed", "dropped")
_HEADER = struct.Struct("<B4QQ")  # kind, the gate's counters, a value (the refused size)
_CHUNK = struct.Struct("<qBdIII")  # stamp ns, has stamp, dt, rows, columns, bytes of names


class FrameKind(IntEnum):
    READY = 0  # the gate's subscription exists; counters only
    COUNTERS = 1  # nothing new within the gate's reporting interval
    CHUNK = 2
    MALFORMED = 3  # a message the gate could not decode; the detail says why
    TOO_LARGE = 4  # a message refused by its byte length alone; the value is that length


class BrokenFrameError(QwenVlaError, ValueError):
    """Bytes from the gate that are not a frame :func:`encode_frame` wrote: the gate is broken and is
    restarted. Only this is; an error raised while handing a good frame on is a bug and propagates."""


@dataclass(frozen=True)
class GateFrame:
    kind: FrameKind
    counters: dict[str, int]
    chunk: ActionChunk | None = None
    detail: str = ""
    size_bytes: int = 0

    def decoded(self) -> ActionChunk:
        """The chunk, or MalformedMessageError for a message the gate could not decode (counted as malformed)."""
        if self.chunk is None:
            raise MalformedMessageError(self.detail or f"no chunk in a {self.kind.name} frame")
        return self.chunk


def encode_frame(kind: FrameKind, counters: dict[str, int], *, chunk: ActionChunk | None = None,
                 detail: str = "", size_bytes: int = 0) -> bytes:
    header = _HEADER.pack(kind, *(counters.get(name, 0) for name in COUNTERS), size_bytes)
    if kind == FrameKind.CHUNK:
        if chunk is None:
            raise ValueError("a CHUNK frame needs a chunk")
        actions = np.ascontiguousarray(chunk.actions, dtype="<f8")
        if actions.ndim != 2:
            raise ValueError(f"chunk actions must be 2-D, got shape {actions.shape}")
        names = "\0".join(chunk.channel_names).encode()
        stamp = chunk.stamp_ns if chunk.stamp_ns is not None else 0
        body = _CHUNK.pack(stamp, chunk.stamp_ns is not None, chunk.dt, *actions.shape, len(names))
        return header + body + names + actions.tobytes()
    return header + detail.encode()


def decode_frame(data: bytes) -> GateFrame:
    """A frame as :func:`encode_frame` wrote it; BrokenFrameError for anything else (the gate is then broken)."""
    if len(data) < _HEADER.size:
        raise BrokenFrameError(f"gate frame of {len(data)} bytes, shorter than its header")
    kind_value, *counts, size_bytes = _HEADER.unpack_from(data)
    try:
        kind = FrameKind(kind_value)
    except ValueError as exc:  # FrameKind's own refusal of an unknown value
        raise BrokenFrameError(f"unknown gate frame kind {kind_value}") from exc
    counters = dict(zip(COUNTERS, counts, strict=True))
    rest = memoryview(data)[_HEADER.size:]
    if kind != FrameKind.CHUNK:
        return GateFrame(kind, counters, detail=bytes(rest).decode(errors="replace"), size_bytes=size_bytes)
    if len(rest) < _CHUNK.size:
        raise BrokenFrameError("gate chunk frame shorter than its chunk header")
    stamp, has_stamp, dt, rows, columns, names_length = _CHUNK.unpack_from(rest)
    names_end = _CHUNK.size + names_length
    expected = names_end + rows * columns * 8
    if len(rest) != expected:
        raise BrokenFrameError(f"gate chunk frame of {len(rest)} bytes for {rows} x {columns} actions, expected {expected}")
    names = tuple(bytes(rest[_CHUNK.size:names_end]).decode().split("\0")) if names_length else ()
    actions = np.frombuffer(rest[names_end:], dtype="<f8").reshape(rows, columns).copy()
    chunk = ActionChunk(actions, names, dt, stamp if has_stamp else None)
    return GateFrame(kind, counters, chunk=chunk)


class NewestChunk:
    """The gate's outbox: the newest raw chunk message and up to ``NOTICE_DEPTH`` refusal notices.

    A message arriving while another waits replaces it (``dropped`` counts the replaced
    ones): the controller is handed what the policy said last. Notices are kept apart, so a
    refusal is reported even while chunks keep coming; beyond ``NOTICE_DEPTH`` they are only
    counted (``too_large`` / ``malformed`` in every frame).
    """

    def __init__(self) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._message: bytes | None = None
        self._notices: deque[tuple[FrameKind, str, int]] = deque(maxlen=NOTICE_DEPTH)
        self._ready = threading.Condition()

    def offer(self, message: bytes, max_bytes: int) -> None:
        """A received serialized message: refused by length alone, or kept as the newest."""
        with self._ready:
            self.counters["received"] += 1
            if len(message) > max_bytes:
                self.counters["too_large"] += 1
                self._notices.append((FrameKind.TOO_LARGE, "", len(message)))
            else:
                if self._message is not None:
                    self.counters["dropped"] += 1
                self._message = message
            self._ready.notify()

    def malformed(self, detail: str) -> tuple[FrameKind, str, int]:
        """Count a message that did not decode; the notice to send in its place."""
        with self._ready:
            self.counters["malformed"] += 1
        return FrameKind.MALFORMED, detail, 0

    def take(self, timeout_s: float) -> tuple[FrameKind, str, int] | bytes | None:
        """The oldest notice, else the newest message, else None after ``timeout_s``."""
        with self._ready:
            self._ready.wait_for(lambda: self._notices or self._message is not None, timeout=timeout_s)
            if self._notices:
                return self._notices.popleft()
            message, self._message = self._message, None
            return message

    def snapshot(self) -> dict[str, int]:
        with self._ready:
            return dict(self.counters)


@dataclass
class Backoff:
    """Delays before restarting a failed gate: ``first_s`` doubling to ``max_s``; back to
    ``first_s`` once a gate has run ``stable_s`` (a gate that keeps dying is not restarted in a
    tight loop, one that died once after a long run comes back at once)."""

    first_s: float = 0.2
    max_s: float = 5.0
    stable_s: float = 30.0
    _next_s: float = field(default=0.0, init=False)

    def delay(self, ran_s: float) -> float:
        """The wait before the next start, after a gate that ran ``ran_s`` seconds."""
        if ran_s >= self.stable_s or self._next_s == 0.0:
            self._next_s = self.first_s
        else:
            self._next_s = min(self.max_s, self._next_s * 2)
        return self._next_s


@dataclass
class GateProcess:
    """A started gate: its process and the parent's end of its connection."""

    process: subprocess.Popen[bytes]
    connection: Connection
    started_s: float = field(default_factory=time.monotonic)


class GateSupervisor:
    """The controller's side of the gate: one thread reads frames, grants credit, restarts the gate.

    ``start`` launches a gate process (the node builds its command line); ``deliver`` gets
    every frame but READY and COUNTERS (the node queues chunks and notices for the control
    loop). A gate that exits, closes its connection, sends what is not a frame, or is silent
    for ``silence_s`` (it reports at least every second; ``startup_s`` before its first frame,
    since a fresh interpreter importing rclpy takes seconds on a loaded machine) is stopped, logged at ERROR, counted
    in ``failures``, and restarted after ``backoff``; meanwhile no chunk arrives, so the
    controller plays out what it has and holds, as it would for a lost policy.
    """

    def __init__(self, start: Callable[[], GateProcess], deliver: Callable[[GateFrame], None], log: Logger, *,
                 period_s: float, silence_s: float = 10.0, startup_s: float = 120.0,
                 backoff: Backoff | None = None) -> None:
        self.start_gate = start
        self.deliver = deliver
        self.log = log
        self.period_s = period_s
        self.silence_s = silence_s
        self.startup_s = startup_s
        self.backoff = backoff or Backoff()
        self.failures = 0
        self.starts = 0
        self.counters = dict.fromkeys(COUNTERS, 0)  # the current gate's, as last reported
        self.ready = threading.Event()
        self.gate: GateProcess | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-gate", daemon=True)

    def start(self) -> None:
        """Start the first gate and its reader; ``ready`` is set once the gate's subscription exists."""
        self._launch()
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the gate (SIGTERM, then SIGKILL) and the reader, which then sees the connection's end."""
        self._stopping.set()
        with self._lock:
            gate, self.gate = self.gate, None
        if gate is not None:
            _end(gate, timeout_s)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        if gate is not None:
            gate.connection.close()  # only now: closing it under the reader's poll would not wake the reader

    @property
    def pid(self) -> int | None:
        gate = self.gate
        return gate.process.pid if gate is not None else None

    def figures(self) -> dict[str, Any]:
        alive = self.gate is not None and self.gate.process.poll() is None
        return {"gate_pid": self.pid or 0, "gate_alive": alive, "gate_failures": self.failures, "gate_starts": self.starts,
                **{f"gate_{name}": value for name, value in self.counters.items()}}

    def _launch(self) -> GateProcess:
        gate = self.start_gate()
        with self._lock:
            if self._stopping.is_set():  # stopped while this one started: it must not outlive the node
                _end(gate, 1.0)
                gate.connection.close()
                raise _Stopped
            self.gate = gate
        self.starts += 1
        self.counters = dict.fromkeys(COUNTERS, 0)
        return gate

    def _run(self) -> None:
        gate = self.gate
        while gate is not None and not self._stopping.is_set():
            reason = self._serve(gate)
            if self._stopping.is_set():
                return
            self.failures += 1
            with self._lock:
                self.gate = None
            _end(gate, 1.0)
            gate.connection.close()
            delay = self.backoff.delay(time.monotonic() - gate.started_s)
            self.log.error(f"chunk gate (pid {gate.process.pid}) failed: {reason}; no chunks are taken in until it "
                           f"is back, restarting it in {delay:.1f} s (failure {self.failures})")
            if self._stopping.wait(delay):
                return
            gate = self._relaunch()

    def _relaunch(self) -> GateProcess | None:
        """A new gate, trying again after each backoff delay while it cannot start; None once stopping."""
        while not self._stopping.is_set():
            try:
                gate = self._launch()
            except _Stopped:
                return None
            except OSError as exc:
                delay = self.backoff.delay(0.0)
                self.log.error(f"chunk gate could not start ({exc}); trying again in {delay:.1f} s")
                if self._stopping.wait(delay):
                    return None
            else:
                self.log.warning(f"chunk gate restarted (pid {gate.process.pid})")
                return gate
        return None

    def _serve(self, gate: GateProcess) -> str:
        """Read frames from ``gate`` until it fails; the reason it failed."""
        connection = gate.connection
        try:
            connection.send_bytes(CREDIT)
            limit_s = self.startup_s  # until its first frame: a fresh interpreter importing rclpy
            while not self._stopping.is_set():
                if not connection.poll(limit_s):
                    code = gate.process.poll()
                    return f"exited with code {code}" if code is not None else f"silent for {limit_s:g} s"
                limit_s = self.silence_s
                received_s = time.monotonic()
                frame = decode_frame(connection.recv_bytes())
                self.counters = frame.counters
                if frame.kind == FrameKind.READY:
                    self.ready.set()
                elif frame.kind != FrameKind.COUNTERS:
                    self.deliver(frame)
                # one frame a control period: the gate keeps the newest meanwhile
                if self._stopping.wait(max(0.0, self.period_s - (time.monotonic() - received_s))):
                    break
                connection.send_bytes(CREDIT)
        except (EOFError, OSError) as exc:
            try:
                return f"exited with code {gate.process.wait(timeout=EXIT_WAIT_S)}"
            except subprocess.TimeoutExpired:
                return f"connection lost ({exc!r})"
        except BrokenFrameError as exc:
            return f"sent a broken frame ({exc})"
        return "stopping"


class _Stopped(QwenVlaError):
    """The supervisor stopped while a gate was starting."""


def _end(gate: GateProcess, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``, and reap it (no zombie, no orphan)."""
    if gate.process.poll() is None:
        gate.process.terminate()
    try:
        gate.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        gate.process.kill()
        gate.process.wait()
