"""The controller's threads, without ROS: chunk intake, the lock, the paced loop, takeover wake-ups.

:class:`ControlLoop` runs a :class:`~qwen_vla_ros.control.Controller` the way the controller
node needs it, with every clock, sleep and output injected so tests drive it with a fake
clock (docs/architecture.md, control loops, for why it is built this way):

- **Chunk intake.** ``submit`` takes a received message as it came (serialized bytes in the
  node): one larger than ``max_message_bytes`` is refused by its size alone and counted
  (``rejected_too_large``), before anything decodes it. The rest wait in a
  :class:`ChunkMailbox` of ``queue_depth``, which keeps the newest and counts what it pushes
  out. A thread of its own decodes and prepares them (IK included) outside the lock, so no
  decode or preparation ever runs on the loop's critical path, and it takes at most one
  chunk per control period: a flood is thinned to its newest chunks instead of keeping a
  thread busy decoding, whose hold on the GIL the loop would wait for.
- **The lock.** One lock guards the core; only short core calls hold it.
- **The paced loop.** A thread sleeps to absolute deadlines (:class:`~.pacing.Deadlines`):
  a late period runs at once, wholly missed ones are dropped, never bunched. It raises itself
  to ``SCHED_FIFO`` where the host allows it, else warns and runs at normal priority. A period
  that fails is logged and the loop goes on: a dead loop would leave the robot on its last
  command.
- **Takeover.** ``wake`` makes the sleeping loop run a period at once, off the grid, and the
  grid restarts from there. Without the paced thread (simulated time, where a ROS timer
  calls :meth:`ControlLoop.run_period`) ``wake`` runs that period on the caller's thread.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.control.controller import Controller, ControlOutput
from qwen_vla_ros.control.pacing import Deadlines
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.log import Logger
from qwen_vla_ros.teleop.arbitration import Transition

Message = TypeVar("Message")
LOG_PERIOD_NS = NS_PER_S  # the same complaint at most once a second


class Wakeup(Protocol):
    """A sleep that can be cut short (``threading.Event`` fits): ``wait`` is True when woken."""

    def wait(self, timeout: float | None = None) -> bool: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...


@dataclass(frozen=True)
class LoopClock:
    """``monotonic_ns`` paces the loop; ``now_ns`` (ROS time in the node) stamps commands and chunks."""

    monotonic_ns: Callable[[], int] = time.monotonic_ns
    now_ns: Callable[[], int] = time.time_ns


def set_fifo_priority(priority: int) -> None:
    """SCHED_FIFO for the calling thread only; OSError (PermissionError) where the host refuses it."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


@dataclass(frozen=True)
class Period:
    """What one period produced, for the node to publish."""

    now_ns: int
    output: ControlOutput | None  # None until every feedback stream has arrived
    committed: np.ndarray | None  # the committed actions, every ``committed_every`` periods
    transitions: list[Transition] = field(default_factory=list)


class ChunkMailbox(Generic[Message]):
    """Received chunks waiting for preparation: at most ``depth``, the newest kept.

    A chunk arriving to a full mailbox pushes out the oldest waiting one (``dropped`` counts
    them): under a flood the controller works on what the policy said last, and memory and
    the backlog stay bounded.
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be at least 1, got {depth}")
        self.depth = depth
        self.dropped = 0
        self._items: deque[Message] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Message) -> None:
        with self._ready:
            if len(self._items) >= self.depth:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._ready.notify()

    def get(self) -> Message | None:
        """The oldest waiting chunk; blocks while there is none; None once closed."""
        with self._ready:
            while not self._items and not self._closed:
                self._ready.wait()
            return None if self._closed else self._items.popleft()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._items.clear()
            self._ready.notify_all()


class ControlLoop(Generic[Message]):
    def __init__(
        self,
        core: Controller,
        *,
        decode: Callable[[Message], ActionChunk],
        publish: Callable[[Period], None],
        log: Logger,
        max_message_bytes: int,
        queue_depth: int,
        committed_every: int = 0,
        clock: LoopClock | None = None,
        wakeup: Wakeup | None = None,
        set_priority: Callable[[int], None] = set_fifo_priority,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        """``decode`` turns a received message into a chunk (MalformedMessageError: malformed);
        ``publish`` sends a period's output; ``alive`` is False once the process shuts down."""
        self.core = core
        self.lock = threading.Lock()
        self.decode = decode
        self.publish = publish
        self.log = log
        self.max_message_bytes = max_message_bytes
        self.committed_every = committed_every
        self.clock = clock or LoopClock()
        self.wakeup = wakeup or threading.Event()
        self.set_priority = set_priority
        self.alive = alive
        self.chunks: ChunkMailbox[Message] = ChunkMailbox(queue_depth)
        self.deadlines = Deadlines(core.period_ns, self.clock.monotonic_ns())
        self.periods = 0
        self.failed_periods = 0
        self._stopping = threading.Event()
        self._chunk_thread = threading.Thread(target=self._prepare_chunks, name="chunks", daemon=True)
        self._loop_thread: threading.Thread | None = None
        self._logged_ns: dict[str, int] = {}

    # -- life cycle ---------------------------------------------------------------------
    def start(self, paced: bool = True) -> None:
        """Start chunk intake and, if ``paced``, the loop thread (otherwise a timer calls :meth:`run_period`)."""
        self._chunk_thread.start()
        if paced:
            self.deadlines = Deadlines(self.core.period_ns, self.clock.monotonic_ns())
            self._loop_thread = threading.Thread(target=self._pace, name="control", daemon=True)
            self._loop_thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """End both threads; the loop sees the stop at once, not at its next deadline."""
        self._stopping.set()
        self.wakeup.set()
        self.chunks.close()
        for thread in (self._chunk_thread, self._loop_thread):
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    # -- chunks -------------------------------------------------------------------------
    def submit(self, message: Message, size_bytes: int) -> None:
        """A received chunk message; called on the receiving thread, so it only sizes and queues."""
        if size_bytes > self.max_message_bytes:
            with self.lock:
                outcome = self.core.reject_too_large(size_bytes, self.max_message_bytes)
            self._log_once("warning", "too_large", f"rejected action chunk (too_large): {outcome.detail}")
            return
        self.chunks.put(message)

    def _prepare_chunks(self) -> None:
        while (message := self.chunks.get()) is not None:
            started_ns = self.clock.monotonic_ns()
            try:
                self._prepare(message)
            except Exception:  # noqa: BLE001 - one failure must not stop the chunks after it (malformed ones are
                # rejected in _prepare): this is a fault, so its traceback goes to the log
                self._log_once("error", "chunk", f"chunk handling failed:\n{traceback.format_exc()}")
            rest_ns = self.core.period_ns - (self.clock.monotonic_ns() - started_ns)
            if rest_ns > 0:
                self._stopping.wait(rest_ns / NS_PER_S)  # at most one chunk a period

    def _prepare(self, message: Message) -> None:
        now = self.clock.now_ns()
        try:
            chunk = self.decode(message)
        except MalformedMessageError as exc:
            with self.lock:
                outcome = self.core.reject_malformed(str(exc))
        else:
            with self.lock:
                context = self.core.chunk_context(chunk)
            prepared = self.core.prepare(chunk, now, context)  # IK, outside the lock
            with self.lock:
                outcome = self.core.accept(prepared, self.clock.now_ns())
        if not outcome.accepted:
            self._log_once("warning", f"rejected {outcome.reason}",
                           f"rejected action chunk ({outcome.reason}): {outcome.detail}")
        for warning in outcome.warnings:
            self._log_once("warning", "chunk warning", warning)

    # -- periods ------------------------------------------------------------------------
    def wake(self) -> None:
        """A takeover: the operator's first command goes out now, not at the next period."""
        if self._loop_thread is None:
            self.run_period(scheduled=False)  # simulated time: the period runs here
        else:
            self.wakeup.set()  # already set: one early period serves every takeover before it

    def run_period(self, scheduled: bool = True) -> None:
        now = self.clock.now_ns()
        with self.lock:
            output = self.core.step(now, scheduled)
            transitions = self.core.take_transitions()
            liveness = self.core.take_liveness_events()
            due = output is not None and self.committed_every and self.periods % self.committed_every == 0
            committed = self.core.committed(now) if due else None
        self.periods += 1
        for event in liveness:  # a lost policy is an error the operator must see; its return is news
            # Two call sites: rclpy's logger refuses one call site logging at two severities.
            if event.change == "lost":
                self.log.error(event.message)
            else:
                self.log.info(event.message)
        self.publish(Period(now, output, committed, transitions))

    def _pace(self) -> None:
        self._raise_priority()
        while not self._stopping.is_set() and self.alive():
            wait_ns = self.deadlines.wait_ns(self.clock.monotonic_ns())
            woken = wait_ns > 0 and self.wakeup.wait(wait_ns / NS_PER_S)
            if self._stopping.is_set():
                break
            if woken:
                self.deadlines.restart(self.clock.monotonic_ns())
            self.wakeup.clear()  # a takeover this period serves is not served twice
            try:
                self.run_period(scheduled=not woken)
            except Exception:  # noqa: BLE001 - a dead loop would leave the robot on its last command
                if not self.alive():
                    break  # the context shut down mid-period (Ctrl-C, SIGTERM): that is the stop, not a fault
                self.failed_periods += 1
                self._log_once("error", "period", f"control period failed:\n{traceback.format_exc()}")

    def _raise_priority(self) -> None:
        priority = self.core.config.control.realtime_priority
        if not priority:
            return
        try:
            self.set_priority(priority)
        except OSError as exc:  # PermissionError without an rtprio limit
            self.log.warning(
                f"control loop at normal priority: SCHED_FIFO {priority} refused ({exc}); allow it with an rtprio "
                "limit (/etc/security/limits.d) or CAP_SYS_NICE, or set control.realtime_priority: 0"
            )
        else:
            self.log.info(f"control loop thread at SCHED_FIFO priority {priority}")

    # -- reporting ----------------------------------------------------------------------
    def status(self, now_ns: int) -> dict[str, Any]:
        """The core's figures plus the intake's and the loop's own."""
        with self.lock:
            status = self.core.status(now_ns)
        status.update(chunks_dropped=self.chunks.dropped, chunks_waiting=len(self.chunks),
                      periods_skipped=self.deadlines.skipped, periods_failed=self.failed_periods)
        return status

    def _log_once(self, severity: Literal["warning", "error"], key: str, message: str) -> None:
        """``message`` unless the same kind was logged within the last second (a flood must not flood the log).

        One call site per severity: rclpy's logger refuses a call site that logs at two.
        """
        now = self.clock.monotonic_ns()
        last = self._logged_ns.get(key)
        if last is None or now - last >= LOG_PERIOD_NS:
            self._logged_ns[key] = now
            if severity == "error":
                self.log.error(message)
            else:
                self.log.warning(message)
