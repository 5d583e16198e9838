"""The controller's loop without ROS: deadlines, late and missed periods, takeover wake-ups, stop,
failing periods, SCHED_FIFO refusal, and the chunk intake (size judged before decoding, a bounded
queue that keeps the newest, bounded blending).

The loop runs on its real thread against the real ALOHA controller core. Its clock and sleep are
a fake (``FakeTime``): a sleep advances the fake clock at once, so deadlines are exact and the
tests take milliseconds. Where promptness in real time is the point (stop), the real clock is used.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.robots import ALOHA_START, FollowingRobot, aloha_action, make_controller

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import load_embodiment, load_runtime
from qwen_vla_ros.control import Controller
from qwen_vla_ros.control.blending import Blender
from qwen_vla_ros.control.interpolation import Trajectory
from qwen_vla_ros.control.loop import ChunkMailbox, ControlLoop, LoopClock, Period
from qwen_vla_ros.errors import MalformedMessageError

MS = 1_000_000
PERIOD_NS = 20 * MS  # config/aloha.yaml: control.rate_hz 50
START_NS = 1_000 * NS_PER_S
ROS_OFFSET_NS = 7 * NS_PER_S  # ROS time differs from the monotonic clock
RUNTIME_YAML = Path(__file__).resolve().parent.parent / "config" / "runtime.yaml"


class FakeTime:
    """The monotonic and ROS clocks and the loop's sleep: ``wait`` advances the clock by its timeout,
    or up to ``wake_at_ns`` when a takeover is scheduled within it (and then reports being woken)."""

    def __init__(self) -> None:
        self.t_ns = START_NS
        self.wake_at_ns: int | None = None
        self.woken = False

    def monotonic_ns(self) -> int:
        return self.t_ns

    def now_ns(self) -> int:
        return self.t_ns + ROS_OFFSET_NS

    def wait(self, timeout: float | None = None) -> bool:
        if self.woken:
            return True
        timeout_ns = round((timeout or 0.0) * NS_PER_S)
        if self.wake_at_ns is not None and self.wake_at_ns <= self.t_ns + timeout_ns:
            self.t_ns, self.wake_at_ns, self.woken = self.wake_at_ns, None, True
            return True
        self.t_ns += timeout_ns
        return False

    def set(self) -> None:
        self.woken = True

    def clear(self) -> None:
        self.woken = False


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))

    def of(self, level: str) -> list[str]:
        return [message for lvl, message in self.lines if lvl == level]


def make_loop(core: Controller, fake: FakeTime, log: Log, on_period, **options) -> ControlLoop:
    settings = dict(decode=lambda chunk: chunk, max_message_bytes=10_000, queue_depth=2, set_priority=lambda priority: None)
    settings.update(options)
    return ControlLoop(core, publish=on_period, log=log, clock=LoopClock(fake.monotonic_ns, fake.now_ns), wakeup=fake,
                       **settings)


def run_periods(core: Controller, fake: FakeTime, count: int, during=None, **options) -> tuple[list[int], ControlLoop, Log]:
    """Run the paced loop until ``count`` periods were published; returns their monotonic times.
    ``during(index)`` runs inside period ``index`` (to stall it, schedule a takeover or fail)."""
    times: list[int] = []
    log = Log()
    done = threading.Event()

    def on_period(period: Period) -> None:
        assert period.now_ns == fake.t_ns + ROS_OFFSET_NS  # commands are stamped with ROS time
        times.append(fake.t_ns)
        if during is not None:
            during(len(times) - 1)
        if len(times) == count:
            loop.stop()
            done.set()

    loop = make_loop(core, fake, log, on_period, **options)
    loop.start()
    assert done.wait(10.0), f"only {len(times)} periods ran"
    loop.stop()
    assert not loop.running
    return times, loop, log


def test_periods_run_on_an_absolute_deadline_grid() -> None:
    fake = FakeTime()
    times, loop, _ = run_periods(make_controller("aloha"), fake, 6)
    # The first deadline is the start itself, then one period apart: start + k * period.
    assert times == [START_NS + k * PERIOD_NS for k in range(6)]
    assert loop.deadlines.skipped == 0


def test_a_late_period_runs_at_once_and_missed_periods_are_dropped_not_bunched() -> None:
    fake = FakeTime()

    def stall(index: int) -> None:
        if index == 2:
            fake.t_ns += 55 * MS  # period 2 took 2.75 periods

    times, loop, _ = run_periods(make_controller("aloha"), fake, 6, during=stall)
    # The stall ended at 40 + 55 = 95 ms: deadline 60 is dropped, 80 runs late at once (95 ms),
    # and the grid keeps its phase: 100, 120, 140.
    assert times == [START_NS + t * MS for t in (0, 20, 40, 95, 100, 120)]
    assert loop.deadlines.skipped == 1

    fake = FakeTime()

    def stall_past(index: int) -> None:
        if index == 1:
            fake.t_ns += 47 * MS  # ends at 67 ms: 40 and 60 passed, 60 is late by 7 ms

    times, loop, _ = run_periods(make_controller("aloha"), fake, 5, during=stall_past)
    # One late period runs at once (67 ms), never the missed ones back to back; the grid keeps its phase.
    assert times == [START_NS + t * MS for t in (0, 20, 67, 80, 100)]
    assert loop.deadlines.skipped == 1


def test_a_takeover_wakes_the_loop_for_a_period_off_the_grid_and_restarts_the_grid_from_it() -> None:
    core = make_controller("aloha")
    fake = FakeTime()

    def takeover(index: int) -> None:
        if index == 1:
            fake.wake_at_ns = fake.t_ns + 7 * MS  # the Joy callback wakes the loop 7 ms into the sleep

    times, _, _ = run_periods(core, fake, 5, during=takeover)
    assert times == [START_NS + t * MS for t in (0, 20, 27, 47, 67)]
    # The early period is not counted as a period error (it is off the grid on purpose).
    assert core.status(fake.now_ns())["period_error_ms_max"] == 0.0


def test_without_the_paced_thread_a_wake_runs_the_period_on_the_callers_thread() -> None:
    """Simulated time: a ROS timer runs the periods, and a takeover runs one at once where it happens."""
    fake = FakeTime()
    ran: list[str] = []
    loop = make_loop(make_controller("aloha"), fake, Log(), lambda period: ran.append(threading.current_thread().name))
    loop.start(paced=False)
    try:
        loop.wake()
        assert ran == [threading.current_thread().name] and not loop.running
    finally:
        loop.stop()


def test_stop_ends_the_loop_at_once_not_at_its_next_deadline() -> None:
    """Real clock and a real Event: at 0.5 Hz the loop sleeps 2 s between periods."""
    core = Controller(load_embodiment("aloha", {"control.rate_hz": 0.5, "control.realtime_priority": 0}), load_runtime())
    periods = threading.Event()
    loop = ControlLoop(core, decode=lambda chunk: chunk, publish=lambda period: periods.set(), log=Log(),
                       max_message_bytes=10_000, queue_depth=2)
    loop.start()
    assert periods.wait(5.0)
    started = time.monotonic()
    loop.stop(timeout_s=5.0)
    assert time.monotonic() - started < 0.5
    assert not loop.running


def test_a_failing_period_is_logged_and_the_loop_goes_on() -> None:
    fake = FakeTime()

    def fail(index: int) -> None:
        if index in (1, 2):
            raise RuntimeError("publisher gone")

    times, loop, log = run_periods(make_controller("aloha"), fake, 6, during=fail)
    assert times == [START_NS + k * PERIOD_NS for k in range(6)]
    assert loop.failed_periods == 2
    # Logged, but not once per period: the second failure within a second is not repeated.
    [logged] = log.of("error")
    assert logged.startswith("control period failed:") and "RuntimeError: publisher gone" in logged
    assert "Traceback" in logged, "a failed period is a fault: its traceback goes to the log"


def test_sched_fifo_is_asked_for_the_configured_priority_and_a_refusal_is_a_warning() -> None:
    priority = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "aloha.yaml").read_text())["control"][
        "realtime_priority"]
    asked: list[int] = []

    def refuse(value: int) -> None:
        asked.append(value)
        raise PermissionError(1, "Operation not permitted")

    times, _, log = run_periods(make_controller("aloha"), FakeTime(), 3, set_priority=refuse)
    assert asked == [priority] and len(times) == 3  # the loop runs at normal priority
    assert any(f"SCHED_FIFO {priority} refused" in line for line in log.of("warning")), log.lines

    _, _, log = run_periods(make_controller("aloha"), FakeTime(), 1, set_priority=asked.append)
    assert f"control loop thread at SCHED_FIFO priority {priority}" in log.of("info")


# -- chunk intake -------------------------------------------------------------------------


def test_the_mailbox_keeps_the_newest_chunks_and_counts_what_it_drops() -> None:
    mailbox: ChunkMailbox[int] = ChunkMailbox(depth=2)
    for item in range(5):
        mailbox.put(item)
    assert mailbox.dropped == 3 and len(mailbox) == 2
    assert [mailbox.get(), mailbox.get()] == [3, 4]
    mailbox.close()
    assert mailbox.get() is None
    with pytest.raises(ValueError, match="depth"):
        ChunkMailbox(depth=0)


def test_a_message_over_the_byte_limit_is_rejected_by_its_size_without_being_decoded() -> None:
    core = make_controller("aloha")
    decoded: list[object] = []
    loop = make_loop(core, FakeTime(), Log(), lambda period: None, decode=decoded.append, max_message_bytes=1000)
    loop.submit(b"x" * 1001, 1001)
    status = loop.status(0)
    assert status["rejected_too_large"] == 1 and status["chunks_rejected"] == 1
    assert decoded == [] and status["chunks_waiting"] == 0
    loop.submit(b"x" * 1000, 1000)  # at the limit: queued for decoding
    assert loop.status(0)["chunks_waiting"] == 1


def accepting_core() -> tuple[Controller, FakeTime]:
    """The ALOHA core with joint states and the policy's heartbeat in, so chunks can be accepted."""
    core = make_controller("aloha")
    fake = FakeTime()
    robot = FollowingRobot(core, aloha_action(ALOHA_START))
    robot.publish(fake.now_ns())
    core.policy_heartbeat(fake.now_ns())
    return core, fake


def test_a_flood_keeps_the_newest_chunk_and_counts_the_dropped_in_the_diagnostics() -> None:
    core, fake = accepting_core()
    depth = yaml.safe_load(RUNTIME_YAML.read_text())["blending"]["queue_depth"]
    release = threading.Event()
    decoded: list[int] = []

    def decode(stamp_ns: int) -> ActionChunk:
        release.wait(5.0)  # the intake thread is busy with the first chunk while the flood arrives
        decoded.append(stamp_ns)
        return ActionChunk(np.tile(aloha_action(), (50, 1)), core.policy.names, 0.02, stamp_ns)

    loop = make_loop(core, fake, Log(), lambda period: None, decode=decode, queue_depth=depth)
    loop.start(paced=False)
    try:
        stamps = [fake.now_ns() - 100 * MS + k * MS for k in range(50)]
        for stamp in stamps:
            loop.submit(stamp, 100)
        release.set()
        deadline = time.monotonic() + 5.0
        while loop.status(0)["chunks_waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    status = loop.status(fake.now_ns())
    # The first was taken before the flood; of the 49 after it only the newest `depth` waited.
    assert decoded[-1] == stamps[-1] and len(decoded) <= 1 + depth
    assert status["chunks_dropped"] == len(stamps) - len(decoded)
    assert status["chunks_accepted"] == len(decoded)
    assert core.policy.stats.newest_stamp_ns == stamps[-1]


def submit_then_a_good_chunk(loop: ControlLoop, bad: object) -> None:
    """Runs the loop on ``bad``, then on a good chunk, until that one is accepted (5 s at most)."""
    loop.start(paced=False)
    try:
        loop.submit(bad, 10)
        loop.submit("chunk", 10)
        deadline = time.monotonic() + 5.0
        while loop.status(0)["chunks_accepted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()


def test_a_chunk_that_cannot_be_decoded_is_counted_as_malformed_and_the_next_one_is_taken() -> None:
    core, fake = accepting_core()

    def decode(message: object) -> ActionChunk:
        if message == "garbage":
            raise MalformedMessageError("not a serialized JointTrajectory")
        return ActionChunk(np.tile(aloha_action(), (50, 1)), core.policy.names, 0.02, fake.now_ns() - 30 * MS)

    loop = make_loop(core, fake, Log(), lambda period: None, decode=decode, queue_depth=8)
    submit_then_a_good_chunk(loop, "garbage")
    status = loop.status(fake.now_ns())
    assert status["rejected_malformed"] == 1 and status["chunks_accepted"] == 1


def test_a_decoder_bug_is_a_logged_fault_not_a_malformed_chunk() -> None:
    """Only MalformedMessageError counts as a malformed chunk: a bare ValueError in the decoder is a bug,
    logged with its traceback, and the chunks after it are still taken."""
    core, fake = accepting_core()

    def decode(message: object) -> ActionChunk:
        if message == "bug":
            raise ValueError("decoder bug")
        return ActionChunk(np.tile(aloha_action(), (50, 1)), core.policy.names, 0.02, fake.now_ns() - 30 * MS)

    log = Log()
    loop = make_loop(core, fake, log, lambda period: None, decode=decode, queue_depth=8)
    submit_then_a_good_chunk(loop, "bug")
    status = loop.status(fake.now_ns())
    assert status["rejected_malformed"] == 0 and status["chunks_accepted"] == 1
    [logged] = log.of("error")
    assert "ValueError: decoder bug" in logged and "Traceback" in logged

# -- blending work per period -------------------------------------------------------------


@pytest.mark.parametrize("method", ["crossfade", "temporal_ensemble"])
def test_blending_keeps_at_most_max_chunks_and_retires_the_oldest(method: str) -> None:
    settings = load_runtime(overrides={"blending.method": method, "blending.max_chunks": 3}).blending
    blender = Blender(settings, 0.02)
    trajectories = [Trajectory(START_NS + k * MS, 0.02, np.full((50, 2), float(k)), "linear") for k in range(10)]
    for k, trajectory in enumerate(trajectories):
        blender.add(trajectory, START_NS + k * MS, np.zeros(2))
    assert [layer.trajectory for layer in blender.layers] == trajectories[-3:]


def test_a_flood_of_chunks_leaves_the_controller_blending_at_most_the_configured_number() -> None:
    """Chunks every 1 ms for 60 ms under temporal ensembling (every chunk overlaps every other)."""
    limit = yaml.safe_load(RUNTIME_YAML.read_text())["blending"]["max_chunks"]
    core = make_controller("aloha", **{"blending.method": "temporal_ensemble"})
    robot = FollowingRobot(core, aloha_action(ALOHA_START))
    now = START_NS
    for k in range(60):
        now = START_NS + k * MS
        robot.publish(now)
        core.policy_heartbeat(now)  # the policy is alive, as policy_node's heartbeat thread says
        outcome = core.submit(ActionChunk(np.tile(aloha_action(), (50, 1)), core.policy.names, 0.02, now - 10 * MS), now)
        assert outcome.accepted
        if k % 20 == 0:
            robot.follow(core.step(now))
        assert len(core.policy.blender.layers) <= limit
    assert len(core.policy.blender.layers) == limit


def test_the_intake_prepares_at_most_one_chunk_a_period_however_fast_they_come() -> None:
    """Real clock: chunks submitted without pause for 10 periods. A flood is thinned to its newest
    chunks rather than keeping a thread busy decoding (whose hold on the GIL the loop would wait for)."""
    core, fake = accepting_core()
    decoded: list[int] = []

    def decode(stamp_ns: int) -> ActionChunk:
        decoded.append(stamp_ns)
        return ActionChunk(np.tile(aloha_action(), (50, 1)), core.policy.names, 0.02, stamp_ns)

    loop = ControlLoop(core, decode=decode, publish=lambda period: None, log=Log(), max_message_bytes=10_000,
                       queue_depth=2, clock=LoopClock(now_ns=fake.now_ns))
    loop.start(paced=False)
    started = time.monotonic()
    submitted = 0
    try:
        while time.monotonic() - started < 10 * PERIOD_NS / NS_PER_S:
            loop.submit(fake.now_ns() - 100 * MS + submitted, 100)
            submitted += 1
            time.sleep(0)  # let the intake thread run
    finally:
        elapsed = time.monotonic() - started
        loop.stop()
    periods = elapsed / (PERIOD_NS / NS_PER_S)
    assert submitted > 3 * (periods + 1), "not a flood: the bound below would not be tested"
    assert len(decoded) <= periods + 1, (len(decoded), elapsed)


def test_a_lost_and_a_returning_policy_are_logged_through_rclpys_logger_without_failing_the_period() -> None:
    """rclpy's logger (the one nodes inject) refuses a call site that logs at two severities: the
    loop once logged both liveness changes from one line, and the period that should report the
    returning policy raised instead of commanding. Uses rclpy's real logger (no node needed)."""
    rclpy_logging = pytest.importorskip("rclpy.logging", reason="rclpy is not installed: pip install '.[ros-wheels]'")
    core, fake = accepting_core()
    timeout_ns = round(core.config.safety.policy_timeout_s * 1e9)
    published: list[int] = []
    loop = make_loop(core, fake, rclpy_logging.get_logger("test_liveness_logging"), lambda p: published.append(p.now_ns))
    loop.run_period()  # heartbeat fresh: running
    fake.t_ns += 2 * timeout_ns
    loop.run_period()  # silent past the timeout: lost (error)
    core.policy_heartbeat(fake.now_ns())
    fake.t_ns += MS
    loop.run_period()  # back: found (info), from the same loop
    assert len(published) == 3 and loop.status(fake.now_ns())["periods_failed"] == 0
