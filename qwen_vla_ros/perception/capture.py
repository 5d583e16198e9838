"""One camera's capture loop: connect, read, stamp, publish; reconnect with backoff.

Each camera runs this loop on its own thread, so a camera that is gone (unplugged, a
missing file, no pyrealsense2) only stops itself: it is logged, counted and retried with
exponential backoff while the other cameras keep publishing. A source that delivers no
frame for ``max_lost`` reads in a row counts as disconnected and is reopened.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.hardware import Camera
from qwen_vla_ros.log import KeyedThrottle, Logger
from qwen_vla_ros.perception.sources import (
    FrameSource,
    Intrinsics,
    SourceError,
    capture_stamp,
    frame_timeout_s,
    published_image,
)

MAX_SKEW_S = 1.0  # device capture times further than this from now are not trusted
LOST_WARNING_PERIOD_S = 5.0


class Backoff:
    """initial, 2x, 4x ... up to maximum seconds; reset after a successful connection."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 10.0) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError(f"need 0 < initial ({initial_s}) <= maximum ({maximum_s})")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._next_s = initial_s

    def next(self) -> float:
        delay = self._next_s
        self._next_s = min(self.maximum_s, self._next_s * 2)
        return delay

    def reset(self) -> None:
        self._next_s = self.initial_s


@dataclass
class CaptureCounts:
    frames: int = 0
    lost: int = 0  # reads that delivered no frame
    disconnects: int = 0  # an open source failed or went silent
    connect_failures: int = 0
    connected: bool = False
    last_error: str = ""


class CameraCapture:
    def __init__(
        self,
        camera: Camera,
        open_source: Callable[[Camera], FrameSource],
        publish: Callable[[Camera, np.ndarray, int, Intrinsics | None], None],
        ros_now_ns: Callable[[], int],
        log: Logger,
        backoff: Backoff | None = None,
        max_lost: int | None = None,
    ) -> None:
        self.camera = camera
        self.open_source = open_source
        self.publish = publish
        self.ros_now_ns = ros_now_ns
        self.log = log
        self.backoff = backoff or Backoff()
        self.timeout_s = frame_timeout_s(camera)
        self.max_lost = max_lost or max(3, round(2.0 * camera.fps))  # about two seconds without a frame
        self.counts = CaptureCounts()
        self.lost_throttle = KeyedThrottle(LOST_WARNING_PERIOD_S)
        self.label = f"camera {camera.name!r} ({camera.source.type})"

    def run(self, stop: threading.Event) -> None:
        source: FrameSource | None = None
        lost_in_row = 0
        period_s = 1.0 / self.camera.fps
        next_due = time.monotonic()
        while not stop.is_set():
            if source is None:
                source = self._connect(stop)
                lost_in_row = 0
                next_due = time.monotonic()
                continue
            try:
                frame = source.read(self.timeout_s)
                if frame is not None:
                    stamp_ns = capture_stamp(frame.host_time_ns, self.ros_now_ns(), time.time_ns(),
                                             round(MAX_SKEW_S * NS_PER_S))
                    image, intrinsics = published_image(frame, self.camera)
                    self.publish(self.camera, image, stamp_ns, intrinsics)
            except SourceError as exc:
                self._disconnect(source, str(exc))
                source = None
                continue
            except Exception as exc:  # noqa: BLE001 - a camera thread must outlive any one bad frame (driver and
                # opencv errors come in their own types); the reason, with its type, is logged and counted
                self._disconnect(source, f"{type(exc).__name__}: {exc}")
                source = None
                continue
            if frame is None:
                self.counts.lost += 1
                lost_in_row += 1
                if self.lost_throttle.ready("lost", time.monotonic_ns()):
                    self.log.warning(f"{self.label}: no frame within {self.timeout_s:g} s ({self.counts.lost} lost so far)")
                if lost_in_row >= self.max_lost:
                    self._disconnect(source, f"no frame for {lost_in_row} reads in a row")
                    source = None
                    continue
            else:
                self.counts.frames += 1
                lost_in_row = 0
            if not source.paced:  # files and folders: the camera's frame rate, no bursts after a stall
                next_due = max(next_due + period_s, time.monotonic())
                stop.wait(next_due - time.monotonic())
        if source is not None:
            source.close()
        self.counts.connected = False

    def _connect(self, stop: threading.Event) -> FrameSource | None:
        try:
            source = self.open_source(self.camera)
            source.open()
        except Exception as exc:  # noqa: BLE001 - SourceError, or a driver error in its own type (pyrealsense2,
            # opencv): the camera thread retries whatever it is, and a foreign error is named with its type
            self.counts.connect_failures += 1
            self.counts.last_error = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
            delay = self.backoff.next()
            self.log.warning(f"{self.label}: cannot open: {self.counts.last_error}; retrying in {delay:g} s")
            stop.wait(delay)
            return None
        self.backoff.reset()
        self.counts.connected = True
        self.log.info(f"{self.label}: streaming")
        return source

    def _disconnect(self, source: FrameSource, reason: str) -> None:
        """Close ``source`` and count the loss; the caller drops its reference and reconnects."""
        self.counts.disconnects += 1
        self.counts.connected = False
        self.counts.last_error = reason
        self.log.warning(f"{self.label}: lost ({reason}); reconnecting")
        try:
            source.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead device may fail too, in the driver's own type
            self.log.warning(f"{self.label}: close failed: {type(exc).__name__}: {exc}")
