"""Real-time pacing and the physics/render threads, driven by a hand-set clock where timing matters."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.sim.loop import FrameGrabber, SimLoop
from qwen_vla_ros.sim.pacing import Pacer
from qwen_vla_ros.sim.world import Simulation

MS = 1_000_000


def test_pacer_steps_what_the_clock_says_is_due() -> None:
    pacer = Pacer(period_ns=20 * MS)
    pacer.start(1000 * MS)
    assert pacer.due(1000 * MS) == 0
    assert pacer.due(1019 * MS) == 0
    assert pacer.due(1020 * MS) == 1
    pacer.advanced(1)
    assert pacer.due(1030 * MS) == 0
    assert pacer.next_due_ns() == 1040 * MS
    assert pacer.due(1075 * MS) == 2  # late: catch up
    pacer.advanced(2)
    assert pacer.offset_ns == 60 * MS
    assert pacer.real_time_factor(1060 * MS) == pytest.approx(1.0)


def test_pacer_drops_lag_beyond_the_catch_up_bound() -> None:
    pacer = Pacer(period_ns=20 * MS, max_catchup_steps=5)
    pacer.start(0)
    assert pacer.due(1000 * MS) == 5  # 50 periods are due; 45 are dropped
    pacer.advanced(5)
    assert pacer.dropped_steps == 45
    assert pacer.offset_ns == 1000 * MS, "stamps stay on the wall clock after a drop"
    assert pacer.sim_time_s == pytest.approx(0.1)
    assert pacer.real_time_factor(1000 * MS) == pytest.approx(0.1)
    assert pacer.due(1000 * MS) == 0


def test_free_running_pacer_always_steps() -> None:
    pacer = Pacer(period_ns=20 * MS, realtime=False)
    pacer.start(0)
    assert [pacer.due(0) for _ in range(3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="positive"):
        Pacer(period_ns=0)


class ManualClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class RecordingRenderer:
    """Stands in for a slow renderer so the test controls when it is busy."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()

    def render(self, snapshot):
        self.release.wait(5)
        return {"cam_main": np.zeros((2, 2, 3), np.uint8)}

    def close(self) -> None:
        pass


def _widowx_loop(clock: ManualClock, renderer: RecordingRenderer, realtime: bool = True):
    sim = Simulation(load_embodiment("widowx"))
    states: list[int] = []
    frames: list[int] = []
    grabber = FrameGrabber(lambda: renderer, lambda f, stamp: frames.append(stamp))
    grabber.start()
    loop = SimLoop(sim, Pacer(period_ns=20 * MS, realtime=realtime), states.append, anchor_ns=10**12,
                   grabber=grabber, camera_period_ns=100 * MS, clock_ns=clock)
    loop.pacer.start(clock())
    return loop, grabber, states, frames


def test_loop_publishes_state_per_tick_and_frames_on_the_camera_grid() -> None:
    clock, renderer = ManualClock(), RecordingRenderer()
    loop, grabber, states, frames = _widowx_loop(clock, renderer)
    try:
        for ms in range(20, 420, 20):
            clock.now = ms * MS
            assert loop.tick() == 1
            grabber.wait_idle(5)
        assert states == [10**12 + ms * MS for ms in range(20, 420, 20)]
        assert frames == [10**12 + ms * MS for ms in (20, 100, 200, 300, 400)]
        assert loop.sim.time_s == pytest.approx(0.4)
    finally:
        grabber.stop()


def test_a_busy_renderer_skips_frames_but_never_stalls_physics() -> None:
    clock, renderer = ManualClock(), RecordingRenderer()
    loop, grabber, states, frames = _widowx_loop(clock, renderer)
    try:
        clock.now = 20 * MS
        loop.tick()  # frame at 20 ms is rendered
        grabber.wait_idle(5)
        renderer.release.clear()  # the next render blocks until released
        clock.now = 100 * MS
        loop.tick()  # frame at 100 ms starts rendering and blocks
        clock.now = 200 * MS
        assert loop.tick() == 5, "physics catches up while the renderer is busy"
        assert grabber.stats.skipped == 1
        renderer.release.set()
        grabber.wait_idle(5)
        assert len(frames) == 2
    finally:
        renderer.release.set()
        grabber.stop()


def test_real_time_thread_keeps_the_real_time_factor_near_one() -> None:
    sim = Simulation(load_embodiment("widowx"))
    stamps: list[int] = []
    loop = SimLoop(sim, Pacer(period_ns=20 * MS), stamps.append, anchor_ns=0)
    loop.start()
    time.sleep(1.0)
    loop.stop()
    figures = loop.report()
    # Never ahead of the clock; behind only if this shared machine starves the thread (loose bound).
    assert figures["sim_time_s"] <= 1.0 + 0.02
    assert 0.5 < figures["real_time_factor_total"] <= 1.02
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_renderer_that_cannot_start_is_reported() -> None:
    def broken():
        raise OSError("no EGL display")

    grabber = FrameGrabber(broken, lambda f, s: None)
    with pytest.raises(RuntimeError, match="no EGL display"):
        grabber.start()
