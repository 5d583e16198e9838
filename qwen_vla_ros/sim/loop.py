"""The simulation's two threads: physics paced to the clock, and rendering beside it.

Physics owns the MjData and must never wait for a frame: in real time, a camera instant
that finds the renderer still busy is skipped (counted), and the frame rate degrades before
the control rate does. Free-running (``realtime=False``) instead waits for every frame, so a
run is reproducible. The renderer is created on its own thread because an EGL context binds
to the thread that makes it current.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen_vla_ros.health import Level
from qwen_vla_ros.sim.pacing import Pacer
from qwen_vla_ros.sim.world import FrameRenderer, Simulation

FramesCallback = Callable[[dict[str, np.ndarray], int], None]
BEHIND_REAL_TIME = 0.9  # a real-time factor below this over one report is a warning ...
SETTLING_S = 2.0  # ... once the loop has run this long (start-up is slower)


@dataclass
class RenderStats:
    frames: int = 0
    skipped: int = 0
    errors: int = 0
    render_s: float = 0.0
    last_error: str = ""

    @property
    def mean_render_ms(self) -> float:
        return 1000 * self.render_s / self.frames if self.frames else 0.0


class FrameGrabber:
    """Renders snapshots on a dedicated thread and hands the frames, with their stamp, to a callback."""

    def __init__(self, make_renderer: Callable[[], FrameRenderer], on_frames: FramesCallback) -> None:
        self._make_renderer = make_renderer
        self._on_frames = on_frames
        self._job: tuple[Any, int] | None = None
        self._wake = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._ready = threading.Event()
        self._stopping = False
        self._start_error: BaseException | None = None
        self.stats = RenderStats()
        self._thread = threading.Thread(target=self._run, name="sim-render", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the thread and wait for its renderer; re-raises a renderer that fails to start."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"renderer did not start within {timeout_s:g} s")
        if self._start_error is not None:
            raise RuntimeError(f"renderer failed to start: {self._start_error}") from self._start_error

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def offer(self, take_snapshot: Callable[[], Any], stamp_ns: int) -> bool:
        """Render this instant if the renderer is free; the snapshot is taken only then."""
        if self.busy:
            self.stats.skipped += 1
            return False
        self._idle.clear()
        with self._wake:
            self._job = (take_snapshot(), stamp_ns)
            self._wake.notify()
        return True

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        return self._idle.wait(timeout_s)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            renderer = self._make_renderer()
        except Exception as exc:  # noqa: BLE001 - the GL backend (EGL, OSMesa) fails in its own types; reported
            # by start(), and the sim runs on without cameras
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                with self._wake:
                    while self._job is None and not self._stopping:
                        self._wake.wait()
                    if self._stopping or self._job is None:  # not stopping: the wait ended because a job came
                        return
                    snapshot, stamp_ns = self._job
                    self._job = None
                started = time.perf_counter()
                try:
                    frames = renderer.render(snapshot)
                    self.stats.render_s += time.perf_counter() - started
                    self.stats.frames += 1
                    self._on_frames(frames, stamp_ns)
                except Exception as exc:  # noqa: BLE001 - one bad frame (a GL error of any type) must not end the
                    # camera stream; counted, with its type, in the diagnostics
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    self._idle.set()
        finally:
            renderer.close()


class SimLoop:
    """Steps ``sim`` on its own thread; after each tick ``on_state(stamp_ns)`` publishes the state.

    Stamps are ``anchor_ns`` plus the sim instant's offset on the pacer's clock, so with the
    anchor taken from ROS time at start they are ROS times of the simulated instants.
    """

    def __init__(
        self,
        sim: Simulation,
        pacer: Pacer,
        on_state: Callable[[int], None],
        anchor_ns: int,
        grabber: FrameGrabber | None = None,
        camera_period_ns: int | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.sim = sim
        self.pacer = pacer
        self._on_state = on_state
        self._anchor_ns = anchor_ns
        self._grabber = grabber
        self._camera_period_ns = camera_period_ns if grabber is not None else None
        self._next_camera_ns = 0
        self._clock_ns = clock_ns
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
        self.step_s = 0.0  # wall time spent in physics, for the load figure
        self.error: BaseException | None = None
        self._last_report = (0.0, 0.0)

    def start(self) -> None:
        self.pacer.start(self._clock_ns())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._grabber is not None:
            self._grabber.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def grabber(self) -> FrameGrabber | None:
        return self._grabber

    def stamp_ns(self) -> int:
        return self._anchor_ns + self.pacer.offset_ns

    def report(self) -> dict[str, float]:
        """Figures since start, and the real-time factor since the previous report."""
        now_ns = self._clock_ns()
        wall_s = (now_ns - self.pacer.start_ns) / 1e9
        sim_s = self.pacer.sim_time_s
        last_wall, last_sim = self._last_report
        self._last_report = (wall_s, sim_s)
        figures = {
            "real_time_factor": (sim_s - last_sim) / (wall_s - last_wall) if wall_s > last_wall else 0.0,
            "real_time_factor_total": self.pacer.real_time_factor(now_ns),
            "sim_time_s": sim_s,
            "wall_time_s": wall_s,
            "dropped_steps": float(self.pacer.dropped_steps),
            "physics_load": self.step_s / wall_s if wall_s > 0 else 0.0,
        }
        if self._grabber is not None:
            stats = self._grabber.stats
            figures.update(camera_frames=float(stats.frames), camera_skipped=float(stats.skipped),
                           render_ms_mean=stats.mean_render_ms, render_errors=float(stats.errors))
        return figures

    def health(self, figures: Mapping[str, float]) -> tuple[Level, str]:
        """Level and message of one :meth:`report`: physics that stopped is an error; in real time,
        falling behind it over the report is a warning."""
        if self.error is not None or not self.running:
            return Level.ERROR, f"physics stopped: {self.error}"
        if self.pacer.realtime and figures["wall_time_s"] > SETTLING_S and figures["real_time_factor"] < BEHIND_REAL_TIME:
            return Level.WARN, f"behind real time (factor {figures['real_time_factor']:.2f})"
        return Level.OK, "running"

    def tick(self) -> int:
        """Simulate the periods due now, offering camera instants on the way; returns periods stepped."""
        due = self.pacer.due(self._clock_ns())
        for _ in range(due):
            started = time.perf_counter()
            self.sim.step()
            self.step_s += time.perf_counter() - started
            self.pacer.advanced()
            self._maybe_capture()
        if due:
            self._on_state(self.stamp_ns())
        return due

    def _maybe_capture(self) -> None:
        if self._grabber is None or self._camera_period_ns is None or self.pacer.offset_ns < self._next_camera_ns:
            return  # (no grabber is also no camera period)
        if not self.pacer.realtime:
            self._grabber.wait_idle()
        self._grabber.offer(self.sim.snapshot, self.stamp_ns())
        # The next instant on the camera grid; instants lost to dropped physics are not owed.
        periods = self.pacer.offset_ns // self._camera_period_ns + 1
        self._next_camera_ns = periods * self._camera_period_ns

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.tick()
                if self.pacer.realtime:
                    self._stop.wait(max(0.0, (self.pacer.next_due_ns() - self._clock_ns()) / 1e9))
        except BaseException as exc:  # surfaced by the node's diagnostics and log
            self.error = exc
            raise
