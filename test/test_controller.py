"""The controller core end to end: scheduling, rejection, committed actions, jump guard, watchdog, e-stop,
embodiment conversions (gripper, WidowX IK, waypoint base) and the command-source seam."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from helpers.limits import envelope_violations
from helpers.robots import (
    ALOHA_START,
    T0_NS,
    FollowingRobot,
    aloha_action,
    assert_within_limits,
    limits_of,
    make_controller,
    run,
    started,
)

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.control import Controller
from qwen_vla_ros.embodiments.gripper import measured_normalized
from qwen_vla_ros.embodiments.ik import pose_error
from qwen_vla_ros.errors import MalformedMessageError

MS = 1_000_000
LATEST = {"blending.method": "latest"}  # the plan is the newest chunk itself, so targets can be read directly


def aloha_chunk(stamp_ns: int, rows: np.ndarray, dt: float = 0.02) -> ActionChunk:
    controller_names = make_controller("aloha").policy.names
    return ActionChunk(np.asarray(rows, dtype=float), controller_names, dt, stamp_ns)


def test_nothing_is_commanded_before_joint_states_arrive() -> None:
    controller = make_controller("aloha")
    assert controller.step(T0_NS) is None
    assert controller.status(T0_NS)["mode"] == "waiting"
    controller.submit(aloha_chunk(T0_NS, [aloha_action()] * 5), T0_NS)
    assert controller.step(T0_NS + 20 * MS) is None



def test_only_a_malformed_joint_state_counts_as_bad_feedback() -> None:
    """A message that cannot be used is a MalformedMessageError and counted; a caller's bug (an arm
    the controller does not know, names that are not a sequence) propagates uncounted."""
    controller = make_controller("aloha")
    arm = controller.layout.arms[0].arm
    with pytest.raises(MalformedMessageError, match="lacks joints"):
        controller.update_joint_state(arm.name, arm.joint_names[1:], [0.0] * (len(arm.joint_names) - 1), T0_NS, T0_NS)
    assert controller.bad_feedback == 1
    with pytest.raises(KeyError, match="unknown arm"):
        controller.update_joint_state("no_such_arm", arm.joint_names, [0.0] * len(arm.joint_names), T0_NS, T0_NS)
    with pytest.raises(TypeError):
        controller.update_joint_state(arm.name, None, [0.0], T0_NS, T0_NS)  # type: ignore[arg-type]
    assert controller.bad_feedback == 1

def test_late_chunk_skips_the_actions_already_in_the_past() -> None:
    controller, _, now = started(**LATEST)
    rows = np.array([aloha_action(ALOHA_START + [0.01 * k, 0, 0, 0, 0, 0]) for k in range(50)])
    outcome = controller.submit(aloha_chunk(now - 100 * MS, rows), now)
    # Actions 0..4 were due at -100..-20 ms; action 5 is due now.
    assert outcome.accepted and outcome.skipped == 5
    assert controller.status(now)["skipped_actions"] == 5
    np.testing.assert_allclose(controller.policy.target(now, controller.feedback), rows[5], atol=1e-12)


def test_out_of_order_and_duplicate_chunks_are_ignored() -> None:
    controller, _, now = started(**LATEST)
    first = np.array([aloha_action(ALOHA_START + 0.1)] * 50)
    assert controller.submit(aloha_chunk(now - 30 * MS, first), now).accepted
    for stamp, reason in ((now - 30 * MS, "duplicate"), (now - 50 * MS, "out_of_order")):
        outcome = controller.submit(aloha_chunk(stamp, np.array([aloha_action(ALOHA_START - 0.1)] * 50)), now)
        assert not outcome.accepted and outcome.reason == reason
    np.testing.assert_allclose(controller.policy.target(now, controller.feedback), first[0], atol=1e-12)
    status = controller.status(now)
    assert status["rejected_duplicate"] == 1 and status["rejected_out_of_order"] == 1 and status["chunks_accepted"] == 2


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda c, now: replace(c, actions=np.where(np.arange(14) == 3, np.nan, c.actions)), "non_finite"),
        (lambda c, now: replace(c, actions=np.where(np.arange(14) == 3, -np.inf, c.actions)), "non_finite"),
        (lambda c, now: replace(c, channel_names=c.channel_names[::-1]), "wrong_names"),
        (lambda c, now: replace(c, actions=c.actions[:, :13], channel_names=c.channel_names[:13]), "wrong_names"),
        (lambda c, now: replace(c, actions=c.actions[:, :13]), "wrong_shape"),
        (lambda c, now: replace(c, actions=c.actions[:0]), "wrong_shape"),
        (lambda c, now: replace(c, dt=0.0), "bad_dt"),
        (lambda c, now: replace(c, dt=-0.02), "bad_dt"),
        (lambda c, now: replace(c, dt=float("nan")), "bad_dt"),
        (lambda c, now: replace(c, stamp_ns=None), "unstamped"),
        (lambda c, now: replace(c, stamp_ns=now + 60 * MS), "future_stamp"),
        (lambda c, now: replace(c, stamp_ns=now - 3 * NS_PER_S), "stale"),
        (lambda c, now: replace(c, stamp_ns=now - 1100 * MS), "expired"),
    ],
)
def test_bad_chunks_are_rejected_whole_and_counted(change, reason: str) -> None:
    controller, _, now = started(**LATEST)
    plan_before = controller.policy.target(now, controller.feedback)
    good = aloha_chunk(now - 30 * MS, np.array([aloha_action(ALOHA_START + 0.2)] * 50))
    outcome = controller.submit(change(good, now), now)
    assert not outcome.accepted and outcome.reason == reason, outcome
    status = controller.status(now)
    assert status[f"rejected_{reason}"] == 1 and status["chunks_rejected"] == 1 and status["chunks_accepted"] == 1
    np.testing.assert_array_equal(controller.policy.target(now, controller.feedback), plan_before)


def test_values_beyond_the_channel_limits_are_clamped_not_rejected() -> None:
    controller, _, now = started(**LATEST)
    rows = np.array([aloha_action(ALOHA_START, gripper=0.5)] * 50)
    rows[:, 1] = 100.0  # shoulder far above its 1.25664 limit
    outcome = controller.submit(aloha_chunk(now - 30 * MS, rows), now)
    assert outcome.accepted and outcome.clamped == 50
    assert controller.policy.target(now, controller.feedback)[1] == pytest.approx(1.25664)


def test_committed_actions_are_exactly_the_next_commands() -> None:
    controller, robot, now = started()  # past the start-up ramp
    rows = np.array([aloha_action(ALOHA_START + 0.3 * math.sin(k / 8)) for k in range(50)])
    controller.submit(aloha_chunk(now - 30 * MS, rows), now)
    controller.step(now)
    committed = controller.committed(now)
    assert committed.shape == (controller.config.control.committed_steps, 14)
    outputs, _ = run(controller, robot, now + controller.period_ns, len(committed))
    np.testing.assert_allclose(np.array([o.positions for o in outputs]), committed, atol=1e-12)


def test_first_command_starts_at_the_measured_position_and_ramps() -> None:
    controller = make_controller("aloha")
    measured = aloha_action(ALOHA_START + [0.2, 0.1, -0.1, 0.0, 0.3, 0.0], gripper=0.2)
    robot = FollowingRobot(controller, measured)
    far = aloha_action(ALOHA_START + [-0.8, 0.4, 0.3, 0.5, -0.5, 0.9], gripper=0.9)
    rows = np.array([far] * 100)  # 1.98 s: within safety.max_chunk_duration_s
    outputs, _ = run(controller, robot, T0_NS, 150, chunks={0: aloha_chunk(T0_NS - 20 * MS, rows, dt=0.02)})
    np.testing.assert_allclose(outputs[0].positions, measured, atol=1e-9)
    assert_within_limits(controller, outputs)
    ramp_periods = int(controller.config.safety.startup_ramp_s / controller.period_s)
    # Half-way through the ramp the command is still well short of the target ...
    halfway = outputs[ramp_periods // 2].positions
    assert np.all(np.abs(halfway - far) > 0.2 * np.abs(measured - far) - 1e-9)
    # ... and once the ramp is over it follows the chunk.
    np.testing.assert_allclose(outputs[ramp_periods + 5].positions, far, atol=1e-9)


def test_trajectory_run_out_holds_the_arms_within_limits() -> None:
    controller, robot, now = started()
    rows = np.array([aloha_action(ALOHA_START + 0.02 * k) for k in range(25)])  # 1 rad/s, ends moving
    outputs, now = run(controller, robot, now, 80, chunks={0: aloha_chunk(now, rows)})
    assert_within_limits(controller, outputs)
    held = np.array([o.positions for o in outputs[-20:]])
    np.testing.assert_allclose(held, np.repeat(held[:1], 20, axis=0), atol=1e-12)
    assert outputs[-1].mode == "holding" and controller.status(now)["holds"] == 1
    assert np.all(np.abs(held[0] - rows[-1]) < 0.05), "held near where the trajectory ended"


def test_base_stops_within_one_period_when_the_trajectory_runs_out() -> None:
    controller, robot, now = started("aloha_mobile")
    rows = np.array([np.concatenate([aloha_action(), [0.4, 0.3]])] * 60)
    outputs, now = run(controller, robot, now, 80, chunks={0: aloha_chunk_mobile(controller, now, rows)})
    base = controller.layout.base.command_index
    moving = [i for i, o in enumerate(outputs) if o.mode == "running"]
    assert outputs[moving[-1]].positions[base] == pytest.approx([0.4, 0.3])
    first_hold = outputs[moving[-1] + 1]
    assert first_hold.mode == "holding" and np.all(first_hold.positions[base] == 0.0)
    assert np.all(first_hold.velocities[base] == 0.0)
    assert_within_limits(controller, outputs, skip_velocity_channels=True)


def aloha_chunk_mobile(controller: Controller, stamp_ns: int, rows: np.ndarray) -> ActionChunk:
    return ActionChunk(rows, controller.policy.names, 0.02, stamp_ns)


def test_stale_joint_states_hold_arms_and_zero_the_base_then_resume_with_a_ramp() -> None:
    controller, robot, now = started("aloha_mobile")
    rows = np.array([np.concatenate([aloha_action(ALOHA_START + 0.3 * math.sin(k / 20)), [0.3, 0.0]]) for k in range(100)])
    outputs, now = run(controller, robot, now, 30, chunks={0: aloha_chunk_mobile(controller, now, rows)})
    timeout_periods = math.ceil(controller.config.safety.joint_state_timeout_s / controller.period_s)
    silent, now = run(controller, robot, now + controller.period_ns, timeout_periods + 15, feedback=False)
    modes = [o.mode for o in silent]
    first_stale = modes.index("stale")
    assert first_stale <= timeout_periods + 1
    base = controller.layout.base.command_index
    assert np.all(silent[first_stale].positions[base] == 0.0), "base zeroed in the first stale period"
    held = np.array([o.positions for o in silent[-5:]])
    np.testing.assert_allclose(held, np.repeat(held[:1], 5, axis=0), atol=1e-12)
    assert controller.status(now)["stale_events"] == 1
    assert_within_limits(controller, outputs + silent, skip_velocity_channels=True)
    resumed, now = run(controller, robot, now + controller.period_ns, 20)
    assert resumed[-1].mode == "running" and controller.safety.ramping
    assert_within_limits(controller, silent[-2:] + resumed, skip_velocity_channels=True)


def test_estop_latches_until_reset_then_resumes_from_measured_with_a_ramp() -> None:
    controller, robot, now = started("aloha_mobile")
    rows = np.array([np.concatenate([aloha_action(ALOHA_START + 0.01 * k), [0.3, 0.2]]) for k in range(100)])
    outputs, now = run(controller, robot, now, 20, chunks={0: aloha_chunk_mobile(controller, now, rows)})
    controller.engage_estop()
    stopped, now = run(controller, robot, now + controller.period_ns, 40)
    base = controller.layout.base.command_index
    assert all(o.mode == "estop" for o in stopped)
    assert np.all(stopped[0].positions[base] == 0.0)
    outcome = controller.submit(aloha_chunk_mobile(controller, now, rows), now)
    assert not outcome.accepted and outcome.reason == "estop", "a chunk that arrives while stopped is not accepted"
    assert controller.status(now)["rejected_estop"] == 1
    still, now = run(controller, robot, now + controller.period_ns, 5)
    assert all(o.mode == "estop" for o in still)
    np.testing.assert_allclose(still[-1].positions, stopped[-1].positions, atol=1e-12)
    assert_within_limits(controller, outputs + stopped + still, skip_velocity_channels=True)

    robot.positions[:14] += 0.1  # the arms were pushed while stopped
    robot.publish(now)
    assert controller.reset_estop()[0]
    held, now = run(controller, robot, now + controller.period_ns, 10)
    assert all(o.mode != "running" for o in held), "the chunk taken in during the e-stop does not run"
    np.testing.assert_allclose(held[0].positions[:14], robot.positions[:14], atol=1e-9)
    assert np.abs(held[0].positions[:14] - still[-1].positions[:14]).max() > 0.09, "from measured, not the last command"
    later = now + controller.period_ns
    controller.submit(aloha_chunk_mobile(controller, later, rows), later)
    resumed, now = run(controller, robot, later, 30)
    assert resumed[-1].mode == "running"
    assert_within_limits(controller, held + resumed, skip_velocity_channels=True)


def test_gripper_is_normalised_in_commands_and_converted_for_the_driver() -> None:
    controller = make_controller("aloha")
    layout = controller.layout
    arm = layout.arms[0]
    gripper = arm.gripper
    values = aloha_action(gripper=0.25)
    joints, motor = layout.arm_command(values, arm)
    np.testing.assert_allclose(joints, ALOHA_START)
    assert motor == pytest.approx(0.6197 + 0.25 * (1.6214 - 0.6197))  # robots.md follower constants
    finger = 0.0440 + 0.75 * (0.0579 - 0.0440)
    assert measured_normalized({"left_finger": finger}, gripper) == pytest.approx(0.75)
    with pytest.raises(MalformedMessageError, match="left_finger"):
        measured_normalized({"gripper": 1.0}, gripper)


def widowx_chunk(controller: Controller, stamp_ns: int, delta: list[float], count: int = 4) -> ActionChunk:
    return ActionChunk(np.array([delta] * count, dtype=float), controller.policy.names, 0.2, stamp_ns)


def widowx_pose(controller: Controller, output) -> np.ndarray:
    arm = controller.layout.arms[0]
    return controller.policy.iks[arm.name].kinematics.forward(output.positions[arm.joint_index])


def test_widowx_deltas_become_ik_joint_targets_that_move_the_end_effector() -> None:
    controller, robot, now = started("widowx")
    start = robot.positions.copy()
    begin = controller.policy.iks["arm"].kinematics.forward(start[:6])
    chunk = widowx_chunk(controller, now, [0.01, -0.005, 0.008, 0.0, 0.0, 0.05, 1.0])
    outputs, now = run(controller, robot, now, 100, chunks={0: chunk})
    end = widowx_pose(controller, outputs[-1])
    expected = begin.copy()
    expected[:3, 3] += 4 * np.array([0.01, -0.005, 0.008])
    yaw = 4 * 0.05
    expected[:3, :3] = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]) @ begin[:3, :3]
    error = pose_error(expected, end)
    assert np.linalg.norm(error[3:]) < 1e-3 and np.linalg.norm(error[:3]) < 1e-2
    assert outputs[-1].positions[6] == pytest.approx(1.0)
    assert_within_limits(controller, outputs)


def test_widowx_unreachable_target_moves_to_the_nearest_pose_with_a_warning() -> None:
    controller = make_controller("widowx")
    robot = FollowingRobot(controller, np.array([0.0, 0.6, -0.6, 0.0, 0.0, 0.0, 0.5]))  # arm stretched forward
    _, now = run(controller, robot, T0_NS, 3)
    outcome = controller.submit(widowx_chunk(controller, now, [0.05, 0, 0, 0, 0, 0, 0.5]), now)
    assert outcome.accepted and outcome.warnings and "unreachable" in outcome.warnings[0]
    assert controller.status(now)["ik_unreachable"] == len(outcome.warnings)


def test_waypoint_base_tracks_a_path_into_twist() -> None:
    controller = make_controller("mobile_base")
    robot = FollowingRobot(controller)
    _, now = run(controller, robot, T0_NS, 3)
    # An arc: 0.1 m per 0.25 s while turning left 0.1 rad per step, in the robot frame at the stamp.
    steps = np.arange(8)
    yaws = 0.1 * steps
    xs = np.concatenate([[0.0], np.cumsum(0.1 * np.cos(yaws[:-1]))])
    ys = np.concatenate([[0.0], np.cumsum(0.1 * np.sin(yaws[:-1]))])
    chunk = ActionChunk(np.stack([xs, ys, yaws], axis=1), controller.policy.names, 0.25, now)
    outputs, now = run(controller, robot, now, 70, chunks={0: chunk})
    assert_within_limits(controller, [o for o in outputs if o.mode == "running"])
    assert np.linalg.norm(robot.pose[:2] - [xs[-1], ys[-1]]) < 0.1
    assert outputs[-1].mode == "holding" and np.all(outputs[-1].positions == 0.0)
    linear = [o.positions[0] for o in outputs if o.mode == "running"]
    assert max(linear) > 0.2 and min(linear) >= -1e-9, "drove forwards along the path"


class Scripted:
    """A command source of fixed targets (the seam teleoperation will use)."""

    name = "scripted"

    def __init__(self, target: np.ndarray):
        self.value = target

    def target(self, now_ns, feedback):
        return self.value

    def tick(self, now_ns, command, dt_s):
        pass


def test_switching_sources_is_bumpless_and_none_holds() -> None:
    controller, robot, now = started()
    rows = np.array([aloha_action(ALOHA_START + 0.01 * k) for k in range(100)])
    before, now = run(controller, robot, now, 20, chunks={0: aloha_chunk(now, rows)})
    controller.add_source(Scripted(aloha_action(ALOHA_START - 0.4)))
    controller.select_source("scripted", ramp_from="command")
    after, now = run(controller, robot, now + controller.period_ns, 80)
    assert after[0].source == "scripted"
    assert_within_limits(controller, before + after)
    np.testing.assert_allclose(after[-1].positions, aloha_action(ALOHA_START - 0.4), atol=1e-9)
    controller.select_source(None)
    held, now = run(controller, robot, now + controller.period_ns, 5)
    assert held[-1].mode == "holding" and held[-1].source == "hold"
    with pytest.raises(KeyError, match="unknown command source"):
        controller.select_source("joystick")


# --- the limits themselves, read without the product ------------------------------------------

@pytest.mark.parametrize("embodiment", ["aloha", "aloha_mobile", "widowx", "mobile_base"])
def test_config_rates_lie_inside_the_reviewed_envelope(embodiment: str) -> None:
    """Every velocity and acceleration in config/<embodiment>.yaml, read with yaml.safe_load, is
    at most what the robot owner reviewed (helpers.limits.REVIEWED): doubling any one fails here
    even where another limit happens to be the binding one."""
    assert envelope_violations(embodiment) == []


@pytest.mark.parametrize("embodiment", ["aloha", "aloha_mobile", "widowx", "mobile_base"])
def test_the_controller_limits_are_no_looser_than_yaml_and_urdf(embodiment: str) -> None:
    """The command layout may be more careful than the config, never less."""
    controller = make_controller(embodiment)
    layout, judged = controller.layout, limits_of(controller)
    assert np.all(layout.lower >= judged.lower) and np.all(layout.upper <= judged.upper)
    assert np.all(layout.velocity <= judged.velocity) and np.all(layout.acceleration <= judged.acceleration)


def test_doubling_any_rate_in_the_aloha_yaml_is_caught(tmp_path, monkeypatch) -> None:
    """The mutation the envelope exists for, run on every velocity and acceleration number of
    config/aloha.yaml in turn (a copy of the file; the URDF comes along)."""
    import re
    import shutil

    import helpers.limits

    text = (helpers.limits.REPO / "config" / "aloha.yaml").read_text()
    (tmp_path / "config").mkdir()
    shutil.copytree(helpers.limits.REPO / "urdf", tmp_path / "urdf")
    monkeypatch.setattr(helpers.limits, "REPO", tmp_path)
    numbers = list(re.finditer(r"\b(velocity|acceleration): ([0-9.]+)", text))
    assert len(numbers) >= 16
    for number in numbers:
        doubled = text[: number.start(2)] + repr(2 * float(number.group(2))) + text[number.end(2):]
        (tmp_path / "config" / "aloha.yaml").write_text(doubled)
        line = text[: number.start()].count("\n") + 1
        assert envelope_violations("aloha"), f"line {line}: {number.group(0)} doubled went unnoticed"
