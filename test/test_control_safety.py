"""The controller core's policy watchdog and chunk bounds (issue 19, sections 1 and 2), without ROS.

Numbers a command is judged against are read from the shipped YAML itself (``yaml.safe_load``),
never from the limits or timeouts the product computed from it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from helpers.robots import (
    ALOHA_START,
    T0_NS,
    FollowingRobot,
    aloha_action,
    make_controller,
    run,
    started,
)

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import ConfigError, load_embodiment
from qwen_vla_ros.control.liveness import PolicyLiveness
from qwen_vla_ros.paths import config_dir

MS = 1_000_000


def shipped(name: str) -> dict:
    return yaml.safe_load((config_dir() / f"{name}.yaml").read_text())


ALOHA_YAML = shipped("aloha")
WAIST = ALOHA_YAML["x-limits"]["waist"]  # velocity 3.14159 rad/s, acceleration 20 rad/s^2
PERIOD_S = 1.0 / ALOHA_YAML["control"]["rate_hz"]
ACTION_DT = ALOHA_YAML["control"]["action_dt"]
SAFETY = ALOHA_YAML["safety"]


def waist_chunk(controller, stamp_ns: int, speed: float, actions: int = 100, dt: float = ACTION_DT) -> ActionChunk:
    """Both waists turning at ``speed`` rad/s from the start pose."""
    rows = np.array([aloha_action(ALOHA_START + np.r_[speed * dt * k, 0, 0, 0, 0, 0]) for k in range(actions)])
    return ActionChunk(rows, controller.policy.names, dt, stamp_ns)


def test_a_silent_policy_brakes_the_arms_to_a_hold_within_the_yaml_limits_long_before_the_chunk_ends() -> None:
    controller, robot, now = started()
    speed = 1.5  # rad/s: 100 actions stay inside the waist range
    chunk = waist_chunk(controller, now, speed)
    moving, now = run(controller, robot, now, 30, chunks={0: chunk})
    assert moving[-1].mode == "running" and moving[-1].velocities[0] == pytest.approx(speed, rel=1e-6)
    silence_start = now  # the last heartbeat arrived at this period
    silent, now = run(controller, robot, now + controller.period_ns, 60, policy_alive=False)
    modes = [o.mode for o in silent]
    first_lost = modes.index("policy_lost")
    # Lost once the silence exceeds the YAML timeout, not before.
    lost_at_s = (silent[first_lost].stamp_ns - silence_start) / NS_PER_S
    assert SAFETY["policy_timeout_s"] < lost_at_s <= SAFETY["policy_timeout_s"] + PERIOD_S + 1e-9
    assert all(m == "running" for m in modes[:first_lost])
    # Braking stays within the YAML's acceleration, and the arm is at rest within v/a (plus a period).
    waist = np.array([o.positions[0] for o in moving[-3:] + silent])
    velocity = np.diff(waist) / PERIOD_S
    assert np.all(np.abs(np.diff(velocity)) <= WAIST["acceleration"] * PERIOD_S * (1 + 1e-9) + 1e-9)
    braking_periods = math.ceil(speed / WAIST["acceleration"] / PERIOD_S) + 1
    at_rest = silent[first_lost + braking_periods:]
    assert at_rest and all(o.positions[0] == at_rest[0].positions[0] for o in at_rest)
    stopped_s = (at_rest[0].stamp_ns - silence_start) / NS_PER_S
    chunk_end_s = (chunk.due_ns(chunk.horizon - 1) - silence_start) / NS_PER_S
    assert stopped_s < 0.5 and chunk_end_s - stopped_s > 0.9, (stopped_s, chunk_end_s)
    status = controller.status(now)
    assert status["mode"] == "policy_lost" and status["policy_losses"] == 1
    assert status["policy_heartbeat_age_s"] > SAFETY["policy_timeout_s"]
    events = controller.take_liveness_events()
    assert [e.change for e in events] == ["found", "lost"] and "no heartbeat for" in events[1].message


def test_chunks_from_a_lost_policy_are_rejected_and_it_resumes_through_the_startup_ramp() -> None:
    controller, robot, now = started()
    _, now = run(controller, robot, now, 20, chunks={0: waist_chunk(controller, now, 1.0)})
    held, now = run(controller, robot, now + controller.period_ns, 40, policy_alive=False)
    assert held[-1].mode == "policy_lost" and held[-1].velocities[0] == 0.0
    here = held[-1].positions.copy()
    outcome = controller.submit(waist_chunk(controller, now, 1.0), now)
    assert not outcome.accepted and outcome.reason == "policy_lost"
    assert controller.status(now)["rejected_policy_lost"] == 1
    # The heartbeat returns; the old plan is gone (holding), and a new chunk fades in over startup_ramp_s.
    back, now = run(controller, robot, now + controller.period_ns, 3)
    assert all(o.mode == "holding" for o in back), "the plan from before the loss never resumes"
    assert [e.change for e in controller.take_liveness_events()] == ["found", "lost", "back"]
    far = aloha_action(ALOHA_START + np.r_[0.6, 0, 0, 0, 0, 0])
    start = now + controller.period_ns
    chunk = ActionChunk(np.tile(far, (50, 1)), controller.policy.names, ACTION_DT, start)
    resumed, now = run(controller, robot, start, 80, chunks={0: chunk})
    assert resumed[0].mode == "running"
    ramp_periods = round(SAFETY["startup_ramp_s"] / PERIOD_S)
    # A minimum-jerk ramp: the first period barely moves, half-way is about half-way, the end arrives.
    assert abs(resumed[0].positions[0] - here[0]) < 1e-3
    halfway = (resumed[ramp_periods // 2].positions[0] - here[0]) / (far[0] - here[0])
    assert 0.3 < halfway < 0.7, halfway
    assert resumed[-1].positions[0] == pytest.approx(far[0], abs=1e-3)


def test_a_policy_never_heard_from_cannot_drive_and_a_beating_one_without_chunks_just_holds() -> None:
    controller = make_controller("aloha")
    robot = FollowingRobot(controller, aloha_action())
    chunk = waist_chunk(controller, T0_NS, 1.0)
    outputs, now = run(controller, robot, T0_NS, 50, chunks={0: chunk}, policy_alive=False)
    assert all(o.mode == "policy_lost" for o in outputs)
    assert all(np.array_equal(o.positions, outputs[0].positions) for o in outputs)
    assert controller.status(now)["rejected_policy_lost"] == 1 and controller.status(now)["chunks_accepted"] == 0
    assert controller.take_liveness_events() == [], "never alive: nothing was lost"
    # A long inference: the heartbeat thread keeps beating while no chunk comes. Not a loss.
    waiting, now = run(controller, robot, now + controller.period_ns, 100)
    assert all(o.mode == "holding" for o in waiting) and controller.liveness.losses == 0


def test_liveness_counts_each_loss_once_and_ignores_beats_out_of_order() -> None:
    liveness = PolicyLiveness(0.25)
    assert not liveness.alive(T0_NS) and liveness.silence_s(T0_NS) == math.inf and liveness.update(T0_NS) is None
    liveness.beat(T0_NS)
    assert liveness.update(T0_NS).change == "found"
    liveness.beat(T0_NS - 100 * MS)  # an older arrival time never moves the last beat back
    assert liveness.alive(T0_NS + 250 * MS) and liveness.update(T0_NS + 250 * MS) is None
    event = liveness.update(T0_NS + 251 * MS)
    assert event.change == "lost" and "0.251 s" in event.message and liveness.losses == 1
    assert liveness.update(T0_NS + 400 * MS) is None and liveness.losses == 1
    liveness.beat(T0_NS + 500 * MS)
    assert liveness.update(T0_NS + 500 * MS).change == "back"


@pytest.mark.parametrize("factor, accepted", [(0.0, True), (0.9, True), (-0.9, True), (1.1, False), (-1.1, False), (500.0, False)])
def test_action_spacing_must_equal_action_dt_within_the_yaml_tolerance(factor: float, accepted: bool) -> None:
    controller, _, now = started()
    dt = ACTION_DT + factor * SAFETY["action_dt_tolerance_s"]
    outcome = controller.submit(waist_chunk(controller, now, 0.1, actions=10, dt=dt), now)
    assert outcome.accepted == accepted, outcome
    if not accepted:
        assert outcome.reason == "bad_spacing" and "control.action_dt" in outcome.detail


def test_a_chunk_spaced_ten_seconds_apart_is_rejected_and_never_moves_the_arm() -> None:
    """Today's failure: 10 s spacing still drove the arm 16 s later."""
    controller, robot, now = started()
    chunk = waist_chunk(controller, now, 0.05, actions=3, dt=10.0)
    outputs, now = run(controller, robot, now, 50, chunks={0: chunk})
    assert controller.status(now)["rejected_bad_spacing"] == 1
    assert all(o.positions[0] == pytest.approx(ALOHA_START[0], abs=1e-12) for o in outputs), "the waist never moved"


def test_chunk_duration_is_bounded_by_the_yaml() -> None:
    controller, _, now = started()
    longest = int(SAFETY["max_chunk_duration_s"] / ACTION_DT + 1e-9) + 1  # first to last action exactly the bound
    assert controller.submit(waist_chunk(controller, now, 0.1, actions=longest), now).accepted
    later = now + 10 * MS
    outcome = controller.submit(waist_chunk(controller, later, 0.1, actions=longest + 1), later)
    assert not outcome.accepted and outcome.reason == "too_long_duration"


@pytest.mark.parametrize("field", ["policy_timeout_s", "action_dt_tolerance_s", "max_chunk_duration_s"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0.0, -0.1])
def test_new_safety_fields_must_be_finite_and_positive(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"safety.{field}"):
        load_embodiment("aloha", {f"safety.{field}": value})


def test_bounds_that_would_reject_the_embodiments_own_chunks_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_chunk_duration_s"):
        load_embodiment("aloha", {"safety.max_chunk_duration_s": 0.5})  # 50 actions at 0.02 s span 0.98 s
    with pytest.raises(ConfigError, match="action_dt_tolerance_s"):
        load_embodiment("aloha", {"safety.action_dt_tolerance_s": 0.01})  # half of action_dt
    for name in ("aloha", "aloha_mobile", "widowx", "mobile_base"):
        assert 0 < shipped(name)["safety"]["policy_timeout_s"] < 0.5, name


def test_estop_problems_name_every_publisher_that_cannot_stop_the_robot() -> None:
    from qwen_vla_ros.control.estop import EstopPublisher, estop_problems

    publishers = [
        EstopPublisher("/operator", "std_msgs/msg/Bool", True, "reliable, volatile"),
        EstopPublisher("/ui", "std_msgs/msg/String", True, "reliable, volatile"),
        EstopPublisher("/odd", "std_msgs/msg/Bool", False, "reliable, transient_local"),
    ]
    problems = estop_problems("/qwen_vla/estop", publishers)
    assert len(problems) == 2
    assert "/ui" in problems[0] and "std_msgs/msg/String" in problems[0] and "can NOT stop the robot" in problems[0]
    assert "/odd" in problems[1] and "reliable, transient_local" in problems[1]
    assert estop_problems("/qwen_vla/estop", publishers[:1]) == []
