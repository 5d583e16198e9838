"""A bounded queue of serialised messages and the thread that writes them to a bag.

Subscription callbacks must return at once whatever the disk does, so they only append
the bytes they received to a queue; one writer thread empties it. The queue is bounded in
bytes, not messages (one camera frame weighs as much as ten thousand joint states), and a
message that does not fit is dropped and counted per topic, never silently. The thread
flushes the bag every ``flush_period_s`` so a crash loses at most that much.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qwen_vla_ros.recording.bag import BagWriter


@dataclass(frozen=True)
class QueuedMessage:
    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


class MessageQueue:
    """Thread-safe FIFO holding at most ``max_bytes`` of message payload."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"queue size must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        self._items: deque[QueuedMessage] = deque()
        self._bytes = 0
        self._peak_bytes = 0
        self._dropped: Counter[str] = Counter()
        self._closed = False
        self._ready = threading.Condition()

    def put(self, message: QueuedMessage) -> bool:
        """False when the message does not fit (one more drop for its topic) or arrives after
        :meth:`close` (it belongs to no recording, so it is not a drop)."""
        size = len(message.data)
        with self._ready:
            if self._closed:
                return False
            if self._bytes + size > self.max_bytes:
                self._dropped[message.topic] += 1
                return False
            self._items.append(message)
            self._bytes += size
            self._peak_bytes = max(self._peak_bytes, self._bytes)
            self._ready.notify()
            return True

    def take_all(self, timeout_s: float) -> list[QueuedMessage]:
        """Everything queued, waiting up to ``timeout_s`` for the first message.

        Taken messages still count against ``max_bytes`` until :meth:`release`: the batch
        in the writer's hands is memory too, so the bound covers everything not yet written.
        """
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait(timeout_s)
            batch = list(self._items)
            self._items.clear()
            return batch

    def release(self, message: QueuedMessage) -> None:
        """The writer is done with a taken message (written or failed)."""
        with self._ready:
            self._bytes -= len(message.data)

    def close(self) -> None:
        """Refuse further messages; what is queued stays to be taken."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        with self._ready:
            return self._closed

    def dropped(self) -> dict[str, int]:
        with self._ready:
            return dict(self._dropped)

    @property
    def peak_bytes(self) -> int:
        with self._ready:
            return self._peak_bytes


@dataclass
class WriterStats:
    """Per-topic results of one bag; ``error`` is the first write failure, if any."""

    types: dict[str, str] = field(default_factory=dict)
    written: Counter = field(default_factory=Counter)
    written_bytes: int = 0
    failed: Counter = field(default_factory=Counter)
    queue_dropped: dict[str, int] = field(default_factory=dict)
    last_timestamp_ns: int | None = None
    topic_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    busy_s: float = 0.0
    queue_peak_bytes: int = 0

    @property
    def mb_per_busy_s(self) -> float | None:
        """Writer throughput while it had work: bytes written over time spent writing and flushing."""
        return self.written_bytes / 1e6 / self.busy_s if self.busy_s > 0 else None

    def problems(self) -> list[str]:
        return [*self.topic_errors.values(), *([self.error] if self.error else [])]

    def dropped(self, topic: str) -> int:
        return self.queue_dropped.get(topic, 0) + self.failed[topic]


class BagRecorder:
    """Owns one open bag: a writer thread drains the queue into it until :meth:`stop`."""

    def __init__(
        self,
        writer: BagWriter,
        queue: MessageQueue,
        flush_period_s: float,
        on_flush: Callable[[WriterStats], None] = lambda stats: None,
    ) -> None:
        if flush_period_s <= 0:
            raise ValueError(f"flush period must be positive, got {flush_period_s} s")
        self._writer = writer
        self._queue = queue
        self._flush_period_s = flush_period_s
        self._on_flush = on_flush
        self._stats = WriterStats()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bag-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> WriterStats:
        """Stop accepting messages, write everything queued, close the bag."""
        self._queue.close()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"bag writer still draining after {timeout_s} s")
        return self.stats()

    def stats(self) -> WriterStats:
        with self._lock:
            snapshot = WriterStats(
                types=dict(self._stats.types),
                written=Counter(self._stats.written),
                written_bytes=self._stats.written_bytes,
                failed=Counter(self._stats.failed),
                queue_dropped=self._queue.dropped(),
                last_timestamp_ns=self._stats.last_timestamp_ns,
                topic_errors=dict(self._stats.topic_errors),
                error=self._stats.error,
                busy_s=self._stats.busy_s,
                queue_peak_bytes=self._queue.peak_bytes,
            )
        return snapshot

    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_period_s
        try:
            while True:
                batch = self._queue.take_all(timeout_s=max(0.0, next_flush - time.monotonic()))
                began = time.perf_counter()
                for message in batch:
                    self._write(message)
                    self._queue.release(message)
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + self._flush_period_s
                with self._lock:
                    self._stats.busy_s += time.perf_counter() - began
                if not batch and self._queue.closed:
                    break
        finally:
            self._close()

    def _write(self, message: QueuedMessage) -> None:
        topic = message.topic
        with self._lock:
            self._stats.types.setdefault(topic, message.msgtype)
            if self._stats.error is not None or topic in self._stats.topic_errors:
                self._stats.failed[topic] += 1
                return
        try:
            self._writer.add_topic(topic, message.msgtype)
        except Exception as exc:  # noqa: BLE001 - the bag libraries fail in types of their own (e.g. a type with
            # no definition): lose this topic, not the trial; the reason, with its type, is recorded with the trial
            self._fail(topic, f"cannot record {topic} ({message.msgtype}): {type(exc).__name__}: {exc}", whole_bag=False)
            return
        try:
            self._writer.write(topic, message.timestamp_ns, message.data)
        except Exception as exc:  # noqa: BLE001 - disk full or gone, in the bag library's own types: keep counting
            # so the loss is on record
            self._fail(topic, f"writing {topic} failed: {type(exc).__name__}: {exc}", whole_bag=True)
            return
        with self._lock:
            self._stats.written[topic] += 1
            self._stats.written_bytes += len(message.data)
            self._stats.last_timestamp_ns = max(message.timestamp_ns, self._stats.last_timestamp_ns or 0)

    def _fail(self, topic: str, reason: str, whole_bag: bool) -> None:
        with self._lock:
            self._stats.failed[topic] += 1
            if whole_bag:
                self._stats.error = self._stats.error or reason
            else:
                self._stats.topic_errors[topic] = reason

    def _flush(self) -> None:
        self._attempt(self._writer.flush, "flushing")
        self._on_flush(self.stats())

    def _close(self) -> None:
        self._attempt(self._writer.close, "closing")

    def _attempt(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - any bag library failure is recorded with the trial (with its
            # type); the bag up to here stays readable
            with self._lock:
                self._stats.error = self._stats.error or f"{what} the bag failed: {type(exc).__name__}: {exc}"
