"""The policy node's decisions without ROS: scheduling, the committed history for real-time
chunking, running statistics, the clock-offset estimator, and the runner and its loop on the tiny model."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers.readings import aloha_joints

from qwen_vla_ros.clock_check import FORGET_AFTER_S, MIN_SAMPLES, ClockOffsetEstimator
from qwen_vla_ros.config import load_embodiment, load_runtime
from qwen_vla_ros.config.runtime import InferenceSchedule
from qwen_vla_ros.errors import MalformedMessageError, PolicyInputError
from qwen_vla_ros.inference.committed import CommittedHistory
from qwen_vla_ros.inference.runner import FAILURE_RETRY_S, INPUT_WAIT_S
from qwen_vla_ros.inference.scheduler import IDLE_WAIT_S, InferenceScheduler
from qwen_vla_ros.inference.stats import RateMeter, Window, steps_covering
from qwen_vla_ros.log import KeyedThrottle

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


# ---------------------------------------------------------------------------- scheduler
def test_rate_trigger_infers_at_the_replan_rate() -> None:
    scheduler = InferenceScheduler(InferenceSchedule(trigger="rate", replan_hz=4.0))
    assert scheduler.decide(T0) == "infer"
    scheduler.started(T0, "infer")
    assert scheduler.decide(T0 + 100 * MS) == "wait"
    assert scheduler.wait_s(T0 + 240 * MS) == pytest.approx(0.010)
    assert scheduler.decide(T0 + 250 * MS) == "infer"


def test_remaining_trigger_waits_for_the_chunk_to_run_low() -> None:
    scheduler = InferenceScheduler(InferenceSchedule(trigger="remaining", remaining_threshold_s=0.3))
    assert scheduler.decide(T0) == "infer", "the first chunk is due at once"
    scheduler.started(T0, "infer")
    scheduler.published(T0 + 1 * S)  # last action due 1 s from now
    assert scheduler.decide(T0 + 600 * MS) == "wait"
    assert scheduler.wait_s(T0 + 600 * MS) == IDLE_WAIT_S
    assert scheduler.decide(T0 + 700 * MS) == "infer"


def test_synchronous_execution_waits_for_the_chunk_to_run_out() -> None:
    """Stop, infer, execute: no inference before the last action, whatever the trigger says."""
    scheduler = InferenceScheduler(InferenceSchedule(trigger="remaining", remaining_threshold_s=0.3), synchronous=True)
    assert scheduler.decide(T0) == "infer"
    scheduler.started(T0, "infer")
    scheduler.published(T0 + 1 * S)
    assert scheduler.decide(T0 + 700 * MS) == "wait" and scheduler.decide(T0 + 999 * MS) == "wait"
    assert scheduler.decide(T0 + 1 * S) == "infer"


def test_other_modes_keep_the_model_warm_and_policy_mode_asks_for_a_chunk_at_once() -> None:
    scheduler = InferenceScheduler(InferenceSchedule(trigger="rate", replan_hz=1.0, keep_warm_s=2.0))
    scheduler.started(T0, "infer")
    assert scheduler.set_mode("teleop") and not scheduler.set_mode("teleop")
    assert scheduler.decide(T0 + 1 * S) == "wait"
    assert scheduler.decide(T0 + 2 * S) == "warm"
    scheduler.started(T0 + 2 * S, "warm")
    assert scheduler.decide(T0 + 3 * S) == "wait"
    scheduler.set_mode("policy")
    assert scheduler.decide(T0 + 3 * S) == "infer", "back in policy mode the next chunk is due at once"
    never = InferenceScheduler(InferenceSchedule(keep_warm_s=0.0))
    never.set_mode("hold")
    assert never.decide(T0) == "wait" and never.decide(T0 + 100 * S) == "wait"
    with pytest.raises(MalformedMessageError, match="unknown mode 'auto'"):
        never.set_mode("auto")


# ---------------------------------------------------------------------------- committed history
NAMES = ("a", "b")
PERIOD = 0.02


def committed_message(history: CommittedHistory, stamp_ns: int, value, steps: int = 10) -> None:
    """Points k = 0.. due at stamp + (k + 1) * period, valued value(t_ns)."""
    offsets = [(k + 1) * PERIOD for k in range(steps)]
    history.add(stamp_ns, NAMES, offsets, [value(stamp_ns + round(o * S)) for o in offsets])


def ramp(t_ns: int) -> list[float]:
    seconds = (t_ns - T0) / S
    return [seconds, 2.0 - 3.0 * seconds]


def test_resampling_on_the_control_grid_returns_the_commands() -> None:
    history = CommittedHistory(NAMES)
    for k in range(20):  # the controller publishes every period
        committed_message(history, T0 + k * 20 * MS, ramp)
    rows = history.resample(T0 + 100 * MS, 0.02, 50)
    # known up to the newest message's horizon: 380 ms + 10 periods = 580 ms
    assert rows.shape == (25, 2)
    np.testing.assert_allclose(rows, [ramp(T0 + 100 * MS + k * 20 * MS) for k in range(25)], atol=1e-12)
    assert history.resample(T0 + 100 * MS, 0.02, 5).shape == (5, 2)


def test_resampling_on_a_coarser_chunk_grid_interpolates() -> None:
    history = CommittedHistory(NAMES)
    for k in range(30):
        committed_message(history, T0 + k * 20 * MS, ramp)
    rows = history.resample(T0 + 33 * MS, 0.2, 4)
    np.testing.assert_allclose(rows, [ramp(T0 + 33 * MS + k * 200 * MS) for k in range(4)], atol=1e-12)


def test_a_newer_message_supersedes_the_plan_from_its_stamp_on() -> None:
    history = CommittedHistory(NAMES)
    committed_message(history, T0, lambda t: [0.0, 0.0])
    committed_message(history, T0 + 60 * MS, lambda t: [1.0, 1.0])
    rows = history.resample(T0 + 20 * MS, 0.02, 10)
    # due at 20, 40, 60 ms: from the first plan; from 80 ms on: the second
    np.testing.assert_allclose(rows[:, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])


def test_nothing_is_known_before_the_history_or_after_its_horizon() -> None:
    history = CommittedHistory(NAMES)
    assert history.resample(T0, 0.02, 10) is None
    committed_message(history, T0, ramp)
    # the command due at the message's own stamp (one period before its first point) is held
    np.testing.assert_allclose(history.resample(T0, 0.02, 1), [ramp(T0 + 20 * MS)])
    assert history.resample(T0 - 1 * MS, 0.02, 10) is None
    assert history.resample(T0 + 201 * MS, 0.02, 10) is None


@pytest.mark.parametrize(
    "names, offsets, rows, message",
    [
        (("b", "a"), [0.02], [[0, 0]], "joint_names"),
        (NAMES, [0.02], [[0, float("nan")]], "not finite"),
        (NAMES, [0.02, 0.02], [[0, 0], [0, 0]], "increasing"),
        (NAMES, [0.0], [[0, 0]], "positive"),
        (NAMES, [0.02], [[0, 0, 0]], "shape"),
    ],
)
def test_unusable_committed_messages_are_errors(names, offsets, rows, message) -> None:
    with pytest.raises(MalformedMessageError, match=message):
        CommittedHistory(NAMES).add(T0, names, offsets, rows)


def test_an_older_committed_message_is_refused() -> None:
    history = CommittedHistory(NAMES)
    committed_message(history, T0, ramp)
    with pytest.raises(MalformedMessageError, match="older"):
        committed_message(history, T0 - MS, ramp)


# ---------------------------------------------------------------------------- statistics
def test_windows_rates_throttles_and_step_counts() -> None:
    window = Window(3)
    assert window.percentile(50) is None
    for value in (5.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert len(window) == 3 and window.percentile(50) == 2.0 and window.percentile(100) == 3.0
    meter = RateMeter(span_s=10.0)
    for k in range(20):
        meter.add(T0 + k * S // 2)
    assert meter.rate(T0 + 10 * S) == pytest.approx(2.0)
    assert meter.rate(T0 + 100 * S) == 0.0
    throttle = KeyedThrottle(2.0)
    assert throttle.ready("cam_low", T0) and throttle.ready("cam_high", T0)
    assert not throttle.ready("cam_low", T0 + S) and throttle.ready("cam_low", T0 + 2 * S)
    assert [steps_covering(s, 0.02) for s in (0.0, 0.001, 0.02, 0.04, 0.041)] == [0, 1, 1, 2, 3]


# ---------------------------------------------------------------------------- clock offset
def test_clock_offset_is_the_smallest_stamp_difference() -> None:
    estimator = ClockOffsetEstimator(window=5, max_offset_s=0.01, min_samples=1)
    delays_ms = [3.0, 0.4, 7.0, 1.5]
    for k, delay in enumerate(delays_ms):  # the robot computer's clock is 25 ms behind ours
        sent = T0 + k * S - 25 * MS
        estimator.add("robot/camera_node", sent, T0 + k * S + round(delay * MS))
        estimator.add("gpu/other", T0 + k * S, T0 + k * S + round(delay * MS))
    offsets = {p.peer: p.offset_s for p in estimator.offsets(T0 + 5 * S)}
    assert offsets == pytest.approx({"robot/camera_node": 0.0254, "gpu/other": 0.0004})
    assert [p.peer for p in estimator.excessive(T0 + 5 * S)] == ["robot/camera_node"]
    ahead = ClockOffsetEstimator(window=5, max_offset_s=0.01, min_samples=1)
    ahead.add("fast", T0 + 40 * MS, T0 + MS)
    assert ahead.excessive(T0)[0].offset_s == pytest.approx(-0.039)
    assert estimator.offsets(T0 + 4 * S + round(FORGET_AFTER_S * S) + 1) == []
    with pytest.raises(ValueError):
        ClockOffsetEstimator(window=0, max_offset_s=0.01)


def test_a_loaded_single_host_does_not_warn() -> None:
    """Heartbeats between nodes of one host, each 150 to 300 ms late (a starved executor): one
    host has one clock, so no offset warning; the figure is reported as that peer's delay."""
    estimator = ClockOffsetEstimator(window=30, max_offset_s=0.01, host="robot")
    for k in range(30):
        sent = T0 + k * S
        estimator.add("robot/policy_node", sent, sent + round((150 + 5 * k) * MS))
    assert estimator.excessive(T0 + 30 * S) == []
    (peer,) = estimator.offsets(T0 + 30 * S)
    assert peer.same_host and peer.offset_s == pytest.approx(0.150)


def test_a_start_up_burst_is_not_judged_until_the_window_has_samples() -> None:
    """The first heartbeats of a start-up arrive late while every node loads; a remote peer is
    judged only from MIN_SAMPLES heartbeats on, when a timely one has arrived."""
    estimator = ClockOffsetEstimator(window=30, max_offset_s=0.01, host="robot")
    for k, delay_ms in enumerate([158.1, 90.0, 40.0]):
        estimator.add("gpu/policy_node", T0 + k * S, T0 + k * S + round(delay_ms * MS))
    assert estimator.excessive(T0 + 3 * S) == []
    for k in range(3, MIN_SAMPLES):
        estimator.add("gpu/policy_node", T0 + k * S, T0 + k * S + round(0.5 * MS))
    assert estimator.excessive(T0 + MIN_SAMPLES * S) == []
    assert estimator.offsets(T0 + MIN_SAMPLES * S)[0].offset_s == pytest.approx(0.0005)
    late = ClockOffsetEstimator(window=30, max_offset_s=0.01, host="robot")  # a real 40 ms offset is still found
    for k in range(MIN_SAMPLES):
        late.add("gpu/policy_node", T0 + k * S - 40 * MS, T0 + k * S + round(0.5 * MS))
    assert [p.peer for p in late.excessive(T0 + MIN_SAMPLES * S)] == ["gpu/policy_node"]


# ---------------------------------------------------------------------------- runner
class Clock:
    """Test-controlled ROS time: each reading advances it by ``tick_ns``."""

    def __init__(self, start_ns: int, tick_ns: int = MS) -> None:
        self.now_ns = start_ns
        self.tick_ns = tick_ns

    def __call__(self) -> int:
        self.now_ns += self.tick_ns
        return self.now_ns


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


@pytest.fixture(scope="module")
def tiny_policy(tiny_checkpoint):
    from qwen_vla_ros.model import load_policy

    return load_policy(tiny_checkpoint)


def make_runner(tiny_policy, overrides: dict | None = None, embodiment: str = "aloha"):
    from qwen_vla_ros.inference.runner import PolicyRunner
    from qwen_vla_ros.perception.state import StateAssembler
    from qwen_vla_ros.perception.sync import ObservationSync

    config = load_embodiment(embodiment)
    runtime = load_runtime(None, overrides or {})
    sync = ObservationSync([c.name for c in config.cameras], StateAssembler(config), runtime.sync)
    clock, log, published = Clock(T0), Log(), []
    runner = PolicyRunner(tiny_policy, config, runtime, sync, lambda camera, frame: frame, published.append, clock, log,
                          "pick up the cube", seed=0)
    return runner, sync, clock, log, published, config


def feed_observation(sync, config, stamp_ns: int) -> None:
    frame = np.full((48, 64, 3), 100, np.uint8)
    for camera in config.cameras:
        sync.add_frame(camera.name, stamp_ns, frame, stamp_ns)
    for arm, positions in aloha_joints(config).items():
        sync.add_joints(arm, stamp_ns, positions, stamp_ns)


def test_runner_publishes_stamped_chunks_and_waits_for_new_observations(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(
        tiny_policy, {"schedule.trigger": "rate", "sync.max_age_s": 2.0})
    assert runner.step().skip.reason == "camera_missing"
    assert [level for level, line in log.lines if "no inference" in line] == ["warning"]
    feed_observation(sync, config, clock.now_ns)
    observed_ns = clock.now_ns
    result = runner.step()
    assert result.outcome == "published" and published[-1] is result.chunk
    assert result.chunk.stamp_ns == observed_ns and result.chunk.channel_names == tuple(config.action.names)
    clock.now_ns += S
    assert runner.step().outcome == "wait", "the same observation is not used twice"
    assert runner.counters.chunks == 1 and runner.counters.prefix_builds == 1
    figures = runner.figures(clock.now_ns)
    assert figures["chunks"] == 1 and figures["skipped.camera_missing"] == 1


def test_runner_decodes_the_cameras_side_by_side(tiny_policy) -> None:
    """Each decode waits at a barrier for every camera's: one after another, the barrier breaks."""
    runner, sync, clock, log, published, config = make_runner(tiny_policy, {"schedule.trigger": "rate"})
    all_cameras = threading.Barrier(len(config.cameras), timeout=10.0)

    def decode(camera: str, frame: np.ndarray) -> np.ndarray:
        all_cameras.wait()
        return frame

    runner.decode = decode
    feed_observation(sync, config, clock.now_ns)
    result = runner.step()
    assert result.outcome == "published", result



def test_runner_skips_a_frame_it_cannot_decode_and_raises_a_decoder_bug(tiny_policy) -> None:
    """A frame the real decoder refuses (MalformedMessageError) is a bad_image skip; a bug in the
    decoder (here a ValueError from numpy) is not bad input: step() raises it for run() to log with its traceback."""
    from qwen_vla_ros.perception.images import model_rgb

    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    runner.decode = lambda camera, frame: model_rgb(frame, "mono8", 48, 64)
    feed_observation(sync, config, clock.now_ns)
    result = runner.step()
    assert result.outcome == "skipped" and result.skip.reason == "bad_image" and "mono8" in result.skip.message
    runner.decode = lambda camera, frame: frame.reshape(7, -1)  # 48*64*3 is not a multiple of 7
    with pytest.raises(ValueError, match="reshape") as raised:
        runner.step()
    assert not isinstance(raised.value, MalformedMessageError)

def test_runner_delay_covers_elapsed_time_and_measured_latency(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy, {"schedule.trigger": "rate"})
    hold = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)

    def controller_publishes(stamp_ns: int) -> None:
        runner.committed.add(stamp_ns, config.action.names, [(j + 1) * 0.02 for j in range(10)], [hold] * 10)

    for k in range(10):
        controller_publishes(clock.now_ns + k * 20 * MS)
    observed_ns = clock.now_ns + 20 * MS
    feed_observation(sync, config, observed_ns)
    clock.now_ns = observed_ns + 65 * MS  # the observation is 65 ms old when inference starts
    chunk = runner.step().chunk
    assert chunk.metadata["delay_steps"] == 4, "ceil(66 ms / 20 ms): what already ran is frozen"
    np.testing.assert_allclose(chunk.actions[:4], [hold] * 4, atol=1e-4)

    for _ in range(5):
        runner.delay_latency.add(0.15)  # measured: observation -> published in 150 ms
    clock.now_ns += S // 2  # the next replan at 2 Hz
    feed_observation(sync, config, clock.now_ns)
    controller_publishes(clock.now_ns - 10 * MS)  # known up to 190 ms ahead: 10 chunk rows
    chunk = runner.step().chunk
    assert chunk.metadata["delay_steps"] == 8, "the p90 latency of 150 ms covers ceil(7.5) actions"
    np.testing.assert_allclose(chunk.actions[:8], [hold] * 8, atol=1e-4)
    assert runner.counters.rtc_chunks == 2 and runner.last_delay_steps == 8


def test_the_study_delay_holds_each_chunk_back_before_it_is_published(tiny_policy) -> None:
    """``study.added_delay_s``: the runner waits that long after inference, then publishes with the
    observation's stamp, so the chunk is that much older on arrival; inference time is unchanged."""
    runner, sync, clock, log, published, config = make_runner(
        tiny_policy, {"schedule.trigger": "rate", "study.added_delay_s": 0.3, "rtc.enabled": False})
    holds: list[tuple[float, int]] = []

    def sleep(seconds: float) -> None:
        holds.append((seconds, len(published)))
        clock.now_ns += round(seconds * S)

    runner.sleep = sleep
    feed_observation(sync, config, clock.now_ns)
    observed_ns = clock.now_ns
    chunk = runner.step().chunk
    assert holds == [(0.3, 0)], "held back once, before anything was published"
    assert chunk.stamp_ns == observed_ns and published == [chunk]
    figures = runner.figures(clock.now_ns)
    assert figures["observation_age_at_publish_ms_p50"] >= 300.0
    assert figures["inference_ms_p50"] < 100.0, "the hold is not inference time (the test clock ticks 1 ms a read)"
    quick, quick_sync, quick_clock, _, _, _ = make_runner(tiny_policy, {"schedule.trigger": "rate"})
    quick.sleep = sleep
    feed_observation(quick_sync, config, quick_clock.now_ns)
    quick.step()
    assert len(holds) == 1, "off by default: no hold"


def test_synchronous_runner_infers_again_once_the_chunk_has_run_from_its_publication(tiny_policy) -> None:
    """The controller executes a synchronous chunk from its arrival (about its publication), so the
    next inference is due a chunk's span after publication, not after the observation."""
    runner, sync, clock, log, published, config = make_runner(
        tiny_policy, {"execution": "synchronous", "study.added_delay_s": 0.5, "rtc.enabled": False})
    runner.sleep = lambda seconds: setattr(clock, "now_ns", clock.now_ns + round(seconds * S))
    feed_observation(sync, config, clock.now_ns)
    chunk = runner.step().chunk
    span_ns = chunk.due_ns(chunk.horizon - 1) - chunk.stamp_ns
    published_ns = clock.now_ns
    assert published_ns - chunk.stamp_ns >= S // 2
    clock.now_ns = chunk.stamp_ns + span_ns + 100 * MS  # past the stamp-based end, before the executed end
    feed_observation(sync, config, clock.now_ns)
    assert runner.step().outcome == "wait"
    clock.now_ns = published_ns + span_ns
    assert runner.step().outcome == "published"


def test_runner_with_rtc_off_ignores_committed_actions(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy, {"schedule.trigger": "rate", "rtc.enabled": False})
    hold = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
    for k in range(10):
        runner.committed.add(clock.now_ns + k * 20 * MS, config.action.names, [(j + 1) * 0.02 for j in range(10)],
                             [hold] * 10)
    observed_ns = clock.now_ns + 20 * MS
    feed_observation(sync, config, observed_ns)
    clock.now_ns = observed_ns + 65 * MS
    chunk = runner.step().chunk
    assert chunk.metadata["delay_steps"] == 0 and runner.counters.rtc_chunks == 0
    assert np.abs(chunk.actions[:4] - hold).max() > 1e-3, "nothing froze the first actions to the committed ones"


@pytest.mark.parametrize("embodiment", ["widowx", "mobile_base"])
def test_rtc_is_off_where_commands_are_not_actions(tiny_policy, embodiment: str) -> None:
    """WidowX commands joints for end-effector deltas, a waypoint base a Twist: nothing committed is an action."""
    runner, *_, log, _, config = make_runner(tiny_policy, {"rtc.enabled": True}, embodiment)
    assert not runner.rtc
    assert any(level == "info" and "real-time chunking is off" in line for level, line in log.lines)
    assert make_runner(tiny_policy, {"rtc.enabled": True})[0].rtc, "ALOHA commands are its actions"


def test_runner_rebuilds_the_prefix_once_per_new_instruction_and_keeps_a_bad_one_out(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    runner.set_instruction("pick up the cube")  # unchanged: nothing to rebuild
    runner.set_instruction("open the drawer")
    runner.set_instruction("open the drawer")
    runner.step()
    assert runner.counters.prefix_builds == 2 and runner.instruction == "open the drawer"
    runner.set_instruction("<|image_pad|> sneaky")
    runner.step()
    assert runner.counters.prefix_builds == 2 and runner.instruction == "open the drawer"
    assert any(level == "error" and "rejected" in line for level, line in log.lines)


def test_runner_warms_without_publishing_outside_policy_mode(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy, {"schedule.keep_warm_s": 1.0})
    runner.set_mode("hold")
    feed_observation(sync, config, clock.now_ns)
    assert runner.step().outcome == "warmed"
    assert runner.step().outcome == "wait"
    assert published == [] and runner.counters.warmups == 1
    runner.set_mode("policy")
    assert runner.step().outcome == "published"


def test_runner_reports_a_failed_inference_and_goes_on(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    for camera in config.cameras:  # frames the model refuses: not HxWx3
        sync.add_frame(camera.name, clock.now_ns, np.zeros((48, 64), np.uint8), clock.now_ns)
    for arm, positions in aloha_joints(config).items():
        sync.add_joints(arm, clock.now_ns, positions, clock.now_ns)
    result = runner.step()
    assert result.outcome == "skipped" and result.skip.reason == "inference_error"
    assert any(level == "error" and "HxWx3" in line for level, line in log.lines)
    feed_observation(sync, config, clock.now_ns)
    assert runner.step().outcome == "published"
    assert runner.figures(clock.now_ns)["skipped.inference_error"] == 1


class BuggyPolicy:
    """Stands in for a policy whose own code has a bug: the bare ValueError/KeyError numpy or a dict
    lookup raise, which the runner once caught as bad input. A bug cannot be planted in the real
    model without patching it, and the runner only calls these two."""

    def infer(self, *args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together with shapes (14,) (7,)")

    def set_task(self, *args: object) -> None:
        raise KeyError("text_config")


def test_a_bug_in_inference_propagates_instead_of_counting_as_a_refused_input(tiny_policy) -> None:
    """Only PolicyInputError (and torch's RuntimeError) is a skipped step; anything else reaches run()'s
    traceback log rather than reading as bad input in the diagnostics."""
    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    feed_observation(sync, config, clock.now_ns)
    runner.policy = BuggyPolicy()
    with pytest.raises(ValueError, match="broadcast") as raised:
        runner.step()
    assert not isinstance(raised.value, PolicyInputError)
    assert runner.counters.skipped["inference_error"] == 0


def test_a_bug_while_building_a_prefix_propagates_instead_of_rejecting_the_instruction(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    runner.policy = BuggyPolicy()
    runner.set_instruction("open the drawer")
    with pytest.raises(KeyError, match="text_config"):
        runner.step()
    assert runner.instruction == "pick up the cube"
    assert not any("rejected" in line for _, line in log.lines)


class Signals:
    """``run``'s stop and wake signals: every wait is recorded (and returns at once), and stop is
    set after ``waits`` of them, so the loop's decisions are read without real sleeping."""

    def __init__(self, waits: int, on_wait=lambda: None) -> None:
        self.remaining = waits
        self.on_wait = on_wait
        self.log: list[tuple[str, float | None]] = []
        self.stop, self.wake = self._Signal(self, "stop"), self._Signal(self, "wake")

    class _Signal:
        def __init__(self, owner: Signals, name: str) -> None:
            self.owner, self.name = owner, name

        def is_set(self) -> bool:
            return self.name == "stop" and self.owner.remaining <= 0

        def wait(self, timeout: float | None = None) -> bool:
            self.owner.log.append((self.name, timeout))
            self.owner.remaining -= 1
            self.owner.on_wait()
            return False

        def clear(self) -> None:
            pass


def test_run_sleeps_until_the_next_inference_can_be_due_and_waits_for_input_when_it_is(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy, {"schedule.trigger": "rate",
                                                                            "schedule.replan_hz": 2.0})
    feed_observation(sync, config, clock.now_ns)

    def time_passes() -> None:
        clock.now_ns += 600 * MS

    signals = Signals(waits=2, on_wait=time_passes)
    runner.run(signals.stop, signals.wake)
    assert len(published) == 1
    # After publishing, the next replan is 0.5 s on (2 Hz): nothing can wake it sooner, so the
    # thread sleeps on stop (for at most the scheduler's idle wait), not on new input.
    # Then it is due, but the observation was used: it waits for new input, briefly.
    assert signals.log == [("stop", IDLE_WAIT_S), ("wake", INPUT_WAIT_S)]


def test_run_logs_a_failing_step_and_goes_on_after_a_pause(tiny_policy) -> None:
    runner, sync, clock, log, published, config = make_runner(tiny_policy)
    calls = []

    def failing_step():
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access")

    runner.step = failing_step
    signals = Signals(waits=3)
    runner.run(signals.stop, signals.wake)
    assert len(calls) == 3 and signals.log == [("stop", FAILURE_RETRY_S)] * 3
    errors = [line for level, line in log.lines if level == "error"]
    assert len(errors) == 1, "three failures within 5 s are logged once"
    assert "inference step failed" in errors[0] and "illegal memory access" in errors[0]


def test_run_ends_promptly_when_stopped(tiny_policy) -> None:
    """Real events and a real thread: stop ends the loop while it waits for input."""
    runner, *_ = make_runner(tiny_policy, {"schedule.trigger": "rate"})
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, wake))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    stop.set()
    wake.set()
    thread.join(timeout=5.0)
    assert not thread.is_alive() and time.monotonic() - started < 1.0
