"""Teleoperation in the control core: the arbitration state machine over scripted Joy sequences,
bumpless takeover and hand-back, base Twist semantics, jog through the IK, grippers and leader arms.

Joy messages are laid out like joy_node's for an Xbox pad (8 axes, 11 buttons); the robot is
:class:`helpers.robots.FollowingRobot`, which tracks every command (the motors cannot exist here).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers.robots import (
    ALOHA_START,
    FollowingRobot,
    aloha_action,
    assert_within_limits,
    limits_of,
    make_controller,
    run,
    started,
)

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import load_embodiment, load_runtime
from qwen_vla_ros.config.teleop import AxisButton
from qwen_vla_ros.control import Controller
from qwen_vla_ros.embodiments.ik import pose_to_xyzrpy
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.teleop.arbitration import Arbiter
from qwen_vla_ros.teleop.mapping import apply_deadzone, parse_joy

MS = 1_000_000
AXES, BUTTONS = 8, 11


def joy_message(controller: Controller, pressed: tuple[str, ...] = (), **axes: float) -> tuple[list[float], list[int]]:
    """Axes and buttons of one Joy: ``pressed`` names TeleopButtons fields, ``axes`` maps 'a<index>' to a value."""
    buttons = [0] * BUTTONS
    values = [0.0] * AXES
    for key, value in axes.items():
        values[int(key[1:])] = value
    for name in pressed:
        binding = getattr(controller.config.teleop.buttons, name)
        if isinstance(binding, AxisButton):
            values[binding.axis] = float(np.sign(binding.threshold))  # trigger pulled / d-pad pushed all the way
        else:
            buttons[binding] = 1
    return values, buttons


def drive(controller: Controller, robot: FollowingRobot, now: int, periods: int, pressed: tuple[str, ...] = (),
          joy_every: int = 1, **axes: float):
    """Step ``periods`` periods sending the same Joy every ``joy_every`` periods (0: none)."""
    outputs = []
    for index in range(periods):
        t = now + index * controller.period_ns
        controller.policy_heartbeat(t)  # the policy node stays alive while the operator drives
        robot.publish(t)
        if joy_every and index % joy_every == 0:
            controller.update_joy(*joy_message(controller, pressed, **axes), t)
        output = controller.step(t)
        robot.follow(output)
        outputs.append(output)
    return outputs, now + periods * controller.period_ns


def moving_chunk(controller: Controller, stamp_ns: int, rate: float = 0.5) -> ActionChunk:
    """Both ALOHA waists turning at ``rate`` rad/s for 2 s (safety.max_chunk_duration_s)."""
    rows = np.array([aloha_action(ALOHA_START + np.r_[rate * 0.02 * k, 0, 0, 0, 0, 0]) for k in range(100)])
    return ActionChunk(rows, controller.policy.names, 0.02, stamp_ns)


def ee_pose(controller: Controller, positions: np.ndarray, arm_index: int = 0) -> np.ndarray:
    arm = controller.layout.arms[arm_index]
    return pose_to_xyzrpy(ArmKinematics.from_config(arm.arm).forward(positions[arm.joint_index]))


# -- the arbiter alone ------------------------------------------------------------------------
def test_deadzone_rescales_like_joy_node() -> None:
    np.testing.assert_allclose(apply_deadzone(np.array([0.04, -0.05, 0.525, -1.0, 1.2]), 0.05), [0, 0, 0.5, -1.0, 1.0])


def test_button_events_fire_once_per_press_and_again_after_the_joystick_expired() -> None:
    teleop = load_embodiment("widowx").teleop
    arbiter = Arbiter(teleop)
    start = [0] * BUTTONS
    start[teleop.buttons.trial_start] = 1
    held = [parse_joy([0.0] * AXES, start, teleop, t * 50 * MS) for t in range(4)]  # joy_node autorepeat
    assert arbiter.on_joy(held[0])[0] == ["trial_start"]
    assert all(arbiter.on_joy(joy)[0] == [] for joy in held[1:])
    later = parse_joy([0.0] * AXES, start, teleop, 150 * MS + round(teleop.joy_timeout_s * NS_PER_S) + MS)
    assert arbiter.on_joy(later)[0] == ["trial_start"], "a press after the joystick expired is a new press"


def test_joy_that_does_not_fit_the_mapping_is_refused_and_counted() -> None:
    controller, robot, now = started("widowx")
    with pytest.raises(MalformedMessageError, match="Joy has 6 buttons but teleop.buttons uses index 10"):
        controller.update_joy([0.0] * AXES, [1] * 6, now)
    with pytest.raises(MalformedMessageError, match="uses axis 7"):
        controller.update_joy([0.0] * 5, [0] * BUTTONS, now)
    with pytest.raises(MalformedMessageError, match="not finite"):
        controller.update_joy([float("nan")] * AXES, [0] * BUTTONS, now)
    assert controller.status(now)["joy_rejected"] == 3
    # Axes that are not numbers cannot come from a Joy message (rclpy types it): a caller's bug, whose
    # ValueError propagates as it is and is not counted as a rejected Joy.
    with pytest.raises(ValueError, match="could not convert") as raised:
        controller.update_joy(["x"] * AXES, [0] * BUTTONS, now)  # type: ignore[list-item]
    assert not isinstance(raised.value, MalformedMessageError)
    assert controller.status(now)["joy_rejected"] == 3
    assert controller.arbiter.mode == "policy"


# -- takeover, release, timeout, hand-back ------------------------------------------------------
def test_deadman_takes_over_mid_motion_from_the_command_without_a_jump() -> None:
    controller, robot, now = started()
    policy, now = run(controller, robot, now, 40, chunks={0: moving_chunk(controller, now)})
    assert policy[-1].velocities[0] == pytest.approx(0.5, abs=1e-6), "the policy is turning the waist"
    teleop, now = drive(controller, robot, now + controller.period_ns, 40, pressed=("deadman",))
    assert teleop[0].arbitration == "teleop" and teleop[0].source == "teleop", "in control from the very next period"
    assert controller.arbiter.takeovers == 1
    # No jump: position and velocity continue, then the waist brakes within its limits and stays.
    assert_within_limits(controller, policy + teleop)
    assert abs(teleop[0].positions[0] - policy[-1].positions[0]) <= 0.5 * controller.period_s * (1 + 1e-9)
    assert teleop[-1].velocities[0] == 0.0 and np.all(teleop[-1].positions == teleop[-2].positions)
    # Chunks are refused while the operator is in control, and the plan of before the takeover
    # (which runs 0.3 s past the hand-back) never resumes: handed back, the controller waits for a new chunk.
    outcome = controller.submit(moving_chunk(controller, now), now)
    assert not outcome.accepted and outcome.reason == "inactive"
    _, now = drive(controller, robot, now, 2)
    controller.update_joy(*joy_message(controller, ("resume_policy",)), now)
    handed_back, now = drive(controller, robot, now, 10, joy_every=0)
    assert all(o.arbitration == "policy" and o.mode == "holding" for o in handed_back)


def test_takeover_served_at_once_is_limited_over_its_real_duration() -> None:
    """The node runs the period at once when the deadman goes down (no wait for the grid): that
    step covers 3 ms, so the command moves 3 ms worth, and it is not counted as a period error."""
    controller, robot, now = started()
    policy, now = run(controller, robot, now, 40, chunks={0: moving_chunk(controller, now)})
    errors_before = controller.status(now)["period_error_ms_max"]
    takeover_ns = now + 3 * MS
    controller.update_joy(*joy_message(controller, ("deadman",), a1=1.0), takeover_ns)
    first = controller.step(takeover_ns, scheduled=False)
    assert first is not None and first.arbitration == "teleop" and first.source == "teleop"
    moved = first.positions - policy[-1].positions
    assert abs(moved[0]) <= 0.5 * 0.003 * (1 + 1e-9) + 1e-12, "the waist keeps its 0.5 rad/s for 3 ms, no more"
    assert np.all(np.abs(moved) <= limits_of(controller).velocity * 0.003 * (1 + 1e-9))
    later, now = drive(controller, robot, takeover_ns + controller.period_ns, 30, pressed=("deadman",), a1=1.0)
    assert_within_limits(controller, policy + [first] + later)
    assert controller.status(now)["period_error_ms_max"] == pytest.approx(errors_before, abs=1e-6)


def test_release_mid_motion_holds_and_never_returns_to_the_policy() -> None:
    controller, robot, now = started("widowx")
    jog, now = drive(controller, robot, now, 40, pressed=("deadman",), a1=1.0)  # +x at full speed
    assert np.linalg.norm(jog[-1].velocities[:6]) > 0.05, "jogging"
    released, now = drive(controller, robot, now, 80)
    assert released[0].arbitration == "hold" and released[0].source == "hold"
    assert_within_limits(controller, jog + released)
    assert np.all(released[-1].velocities[:6] == 0.0)
    np.testing.assert_array_equal(released[-1].positions, released[-30].positions)
    outcome = controller.submit(ActionChunk(np.zeros((5, 7)), controller.policy.names, 0.2, now), now)
    assert outcome.reason == "inactive" and controller.arbiter.mode == "hold"


def test_silent_joystick_counts_as_a_released_deadman() -> None:
    controller, robot, now = started("widowx")
    timeout_periods = round(controller.config.teleop.joy_timeout_s / controller.period_s)
    outputs, now = drive(controller, robot, now, 10, pressed=("deadman",), a1=1.0)
    # The last Joy stays valid until it expires (it keeps jogging), then the deadman counts as released.
    silent, now = drive(controller, robot, now, timeout_periods + 20, joy_every=0)
    modes = [o.arbitration for o in silent]
    assert modes[: timeout_periods - 1] == ["teleop"] * (timeout_periods - 1)
    assert modes[timeout_periods + 1:] == ["hold"] * (len(modes) - timeout_periods - 1)
    moving = [np.linalg.norm(o.velocities[:6]) > 0 for o in silent]
    assert all(moving[: timeout_periods - 1]), "the last Joy still applied before the timeout"
    assert not any(moving[-5:])
    assert_within_limits(controller, outputs + silent)


def test_resume_button_hands_back_and_the_next_chunk_blends_in_from_the_command() -> None:
    controller, robot, now = started(**{"blending.method": "latest"})
    _, now = drive(controller, robot, now, 50, pressed=("deadman",))
    # Jog the left waist away from where the policy left it, release, hand back.
    controller.config.teleop.arm.mode = "joint"
    controller.teleop.mode = "joint"
    jog, now = drive(controller, robot, now, 50, pressed=("deadman",), a0=1.0)
    held, now = drive(controller, robot, now, 20)
    outcome = controller.update_joy(*joy_message(controller, ("deadman", "resume_policy")), now)
    assert outcome.events == ["resume_ignored"] and controller.arbiter.mode == "teleop", "not while the deadman is held"
    ignored, now = drive(controller, robot, now, 2, pressed=("deadman", "resume_policy"))
    _, now = drive(controller, robot, now, 5)
    outcome = controller.update_joy(*joy_message(controller, ("resume_policy",)), now)
    assert outcome.events == ["resume_policy"] and controller.arbiter.mode == "policy"
    waiting, now = drive(controller, robot, now, 5, joy_every=0)
    assert all(o.mode == "holding" and o.arbitration == "policy" for o in waiting), "holds until the next chunk"
    here = waiting[-1].positions
    # The chunk asks for the start pose (0.4 rad away); it ramps in from the command, no jump.
    rows = np.tile(aloha_action(), (100, 1))
    assert controller.submit(ActionChunk(rows, controller.policy.names, 0.02, now), now).accepted
    resumed, now = run(controller, robot, now, 90)
    assert abs(here[0] - ALOHA_START[0]) > 0.2
    assert np.all(np.abs(resumed[0].positions - here) <= limits_of(controller).velocity * controller.period_s + 1e-12)
    assert_within_limits(controller, jog + held + ignored + waiting + resumed)
    np.testing.assert_allclose(resumed[-1].positions, aloha_action(), atol=1e-6)


def test_estop_button_latches_and_puts_the_policy_on_hold() -> None:
    controller, robot, now = started()
    _, now = run(controller, robot, now, 20, chunks={0: moving_chunk(controller, now)})
    outcome = controller.update_joy(*joy_message(controller, ("estop",)), now)
    assert outcome.events == ["estop"] and controller.estop
    assert [(t.previous, t.mode) for t in outcome.transitions] == [("policy", "hold")]
    stopped, now = drive(controller, robot, now, 50, joy_every=0)
    assert stopped[0].mode == "estop" and stopped[-1].velocities[0] == 0.0
    assert controller.reset_estop()[0]
    after, now = drive(controller, robot, now, 10)
    assert all(o.arbitration == "hold" and o.mode == "holding" for o in after), "clearing the e-stop does not restart the policy"


# -- mobile base: Twist semantics ----------------------------------------------------------------
def test_base_teleop_scale_turbo_and_exactly_one_zero_twist_on_release() -> None:
    controller = make_controller("mobile_base")
    robot = FollowingRobot(controller)
    mapping = controller.config.teleop.base
    half = apply_deadzone(np.array([0.5]), controller.config.teleop.axis_deadzone)[0]
    outputs, now = drive(controller, robot, 1000 * NS_PER_S, 100, pressed=("deadman",), a1=1.0, a3=0.5)
    assert outputs[-1].positions.tolist() == pytest.approx([mapping.scale_linear, half * mapping.scale_angular])
    assert_within_limits(controller, outputs)  # accelerations limited on the way up
    turbo, now = drive(controller, robot, now, 100, pressed=("deadman", "turbo"), a1=0.5)
    assert turbo[-1].positions[0] == pytest.approx(half * mapping.scale_linear * mapping.turbo_scale)
    assert all(o.send_base for o in outputs + turbo)
    released, now = drive(controller, robot, now, 100)
    assert released[0].arbitration == "hold"
    assert released[0].send_base and np.all(released[0].positions == 0.0), "stops at once, not ramped"
    assert not any(o.send_base for o in released[1:]), "exactly one zero Twist, then silence"
    assert all(np.all(o.positions == 0.0) for o in released)


def test_base_stops_within_one_period_when_the_joystick_goes_silent() -> None:
    controller = make_controller("mobile_base")
    robot = FollowingRobot(controller)
    driving, now = drive(controller, robot, 1000 * NS_PER_S, 60, pressed=("deadman",), a1=1.0)
    silent, now = drive(controller, robot, now, 60, joy_every=0)
    first_hold = next(i for i, o in enumerate(silent) if o.arbitration == "hold")
    assert silent[first_hold - 1].positions[0] > 0.5, "still driving on the last Joy until the timeout"
    assert np.all(silent[first_hold].positions == 0.0) and silent[first_hold].send_base
    assert [o.send_base for o in silent[first_hold:]].count(True) == 1


def test_policy_holding_still_sends_a_zero_twist_every_period() -> None:
    controller = make_controller("mobile_base")
    robot = FollowingRobot(controller)
    outputs, _ = drive(controller, robot, 1000 * NS_PER_S, 20, joy_every=0)
    assert all(o.arbitration == "policy" and o.mode == "holding" and o.send_base for o in outputs)


# -- arm jog ---------------------------------------------------------------------------------------
def test_cartesian_jog_moves_the_end_effector_along_the_stick_through_the_ik() -> None:
    controller, robot, now = started("widowx")
    speed = controller.config.teleop.arm.linear_speed
    before = ee_pose(controller, robot.positions)
    outputs, now = drive(controller, robot, now, 50, pressed=("deadman",), a1=1.0)  # x forward, 1 s
    after = ee_pose(controller, outputs[-1].positions)
    assert after[0] - before[0] == pytest.approx(speed * 1.0, rel=0.05)
    np.testing.assert_allclose(after[1:], before[1:], atol=1e-3)  # y, z and orientation kept
    assert_within_limits(controller, outputs)
    # Yaw (right stick left) rotates about the vertical through the end effector.
    turned, now = drive(controller, robot, now, 50, pressed=("deadman",), a3=1.0)
    rotated = ee_pose(controller, turned[-1].positions)
    assert rotated[5] - after[5] == pytest.approx(controller.config.teleop.arm.angular_speed * 1.0, rel=0.05)
    np.testing.assert_allclose(rotated[:3], after[:3], atol=1e-3)


@pytest.mark.parametrize("axis, component", [(1, 0), (3, 5)])
def test_a_slow_jog_moves_although_each_step_is_below_the_ik_tolerance(axis: int, component: int) -> None:
    """A stick pushed just past the deadzone asks for 0.05 mm (or 0.5 mrad) per period, less than
    the IK's tolerance: the solver must still step towards it instead of returning the seed."""
    controller, robot, now = started("widowx")
    jog, teleop = controller.config.teleop.arm, controller.config.teleop
    deflection = 0.1
    rate = (jog.linear_speed if component < 3 else jog.angular_speed) * apply_deadzone(np.array([deflection]), teleop.axis_deadzone)[0]
    tolerance = controller.config.arms[0].ee_delta.ik_position_tolerance_m if component < 3 else \
        controller.config.arms[0].ee_delta.ik_rotation_tolerance_rad
    assert rate * controller.period_s < tolerance, "the per-period step must be below the tolerance for this test"
    before = ee_pose(controller, robot.positions)
    outputs, now = drive(controller, robot, now, 50, pressed=("deadman",), **{f"a{axis}": deflection})
    after = ee_pose(controller, outputs[-1].positions)
    assert after[component] - before[component] == pytest.approx(rate * 1.0, rel=0.1)


def test_joint_jog_toggle_and_gripper_buttons() -> None:
    controller, robot, now = started("widowx")
    jog = controller.config.teleop.arm
    outcome = controller.update_joy(*joy_message(controller, ("deadman", "jog_mode")), now)
    assert outcome.events == ["jog_mode"] and controller.teleop.mode == "joint"
    start = robot.positions.copy()
    outputs, now = drive(controller, robot, now, 50, pressed=("deadman", "gripper_close"), a0=-1.0)  # waist axis
    waist = jog.joint_axes.index(0)
    moved = outputs[-1].positions - start
    assert moved[waist] == pytest.approx(-jog.joint_speed * 1.0, rel=0.05)
    assert np.all(moved[[i for i in range(6) if i != waist]] == 0.0)
    assert moved[6] == pytest.approx(-start[6], abs=1e-9), "closed fully (1 s at 1/s from 0.5)"
    opened, now = drive(controller, robot, now, 25, pressed=("deadman", "gripper_open"))
    assert opened[-1].positions[6] == pytest.approx(0.5 * jog.gripper_speed, abs=0.05)


def test_aloha_jog_mode_is_the_left_trigger_and_fires_once_per_pull() -> None:
    """ALOHA's 11 buttons are all bound, so jog_mode is an axis button: the trigger rests at +1
    (joy_node), reads -1 pulled; holding it through autorepeat toggles once, as a button would."""
    controller, _, now = started()
    binding = controller.config.teleop.buttons.jog_mode
    assert isinstance(binding, AxisButton) and binding.axis == 2
    released = {f"a{binding.axis}": 1.0}
    assert controller.update_joy(*joy_message(controller, ("deadman",), **released), now).events == []
    events = [controller.update_joy(*joy_message(controller, ("deadman", "jog_mode")), now + k * MS).events for k in range(1, 4)]
    assert events == [["jog_mode"], [], []] and controller.teleop.mode == "joint"
    controller.update_joy(*joy_message(controller, ("deadman",), **released), now + 5 * MS)
    half_pulled = controller.update_joy(*joy_message(controller, ("deadman",), a2=-0.4), now + 6 * MS)
    assert half_pulled.events == [] and controller.teleop.mode == "joint", "short of the threshold (after the deadzone)"
    controller.update_joy(*joy_message(controller, ("deadman", "jog_mode")), now + 7 * MS)
    assert controller.teleop.mode == "cartesian"


def test_arm_select_jogs_the_other_aloha_arm() -> None:
    controller, robot, now = started()
    assert controller.teleop.selected_arm == "left"
    controller.update_joy(*joy_message(controller, ("deadman", "arm_select")), now)
    assert controller.teleop.selected_arm == "right"
    start = robot.positions.copy()
    outputs, now = drive(controller, robot, now, 25, pressed=("deadman",), a4=1.0)  # z up
    left, right = controller.layout.arms
    np.testing.assert_array_equal(outputs[-1].positions[left.joint_index], start[left.joint_index])
    assert ee_pose(controller, outputs[-1].positions, 1)[2] > ee_pose(controller, start, 1)[2] + 0.015


def test_jog_past_the_workspace_stops_at_its_edge() -> None:
    controller, robot, now = started("widowx")
    outputs, now = drive(controller, robot, now, 500, pressed=("deadman", "turbo"), a1=1.0)  # 10 s forward
    assert controller.teleop.ik_unreachable > 0
    assert_within_limits(controller, outputs)
    np.testing.assert_allclose(outputs[-1].positions, outputs[-2].positions, atol=1e-9)


# -- ALOHA leader arms -------------------------------------------------------------------------------
def leader_controller() -> tuple[Controller, FollowingRobot, int]:
    controller, robot, now = started()
    config = load_embodiment("aloha", {"teleop.leader_follow.enabled": True})
    following = Controller(config, load_runtime())
    following.feedback, following.safety = controller.feedback, controller.safety  # same robot, same command
    robot.controller = following
    return following, robot, now


def publish_leaders(controller: Controller, now: int, joints: np.ndarray, gripper_angle: float, arms=("left", "right")) -> None:
    for arm in arms:
        controller.update_leader(arm, [*controller.config.arm(arm).joint_names, "gripper"], [*joints, gripper_angle], now)


def test_leader_arms_fade_in_from_the_command_then_follow_with_the_gripper_mapped() -> None:
    controller, robot, now = leader_controller()
    leader = controller.config.teleop.leader_follow
    target = ALOHA_START + np.r_[0.5, 0.2, -0.2, 0.3, 0.2, -0.4]
    middle = 0.5 * (leader.gripper_open + leader.gripper_close)
    outputs = []
    for _ in range(90):
        robot.publish(now)
        publish_leaders(controller, now, target, middle)
        controller.update_joy(*joy_message(controller, ("deadman",)), now)
        output = controller.step(now)
        robot.follow(output)
        outputs.append(output)
        now += controller.period_ns
    assert outputs[0].arbitration == "teleop"
    assert_within_limits(controller, outputs)
    assert abs(outputs[0].positions[0] - ALOHA_START[0]) < 1e-3, "starts from the command"
    np.testing.assert_allclose(outputs[-1].positions, np.r_[target, 0.5, target, 0.5], atol=1e-6)
    # A stale leader holds its arm; when it returns the arm fades in again.
    stale = round(controller.config.safety.joint_state_timeout_s / controller.period_s) + 5
    for index in range(stale + 30):
        robot.publish(now)
        publish_leaders(controller, now, target - 0.3, leader.gripper_open, arms=("right",) if index < stale else ("left", "right"))
        controller.update_joy(*joy_message(controller, ("deadman",)), now)
        outputs.append(controller.step(now))
        robot.follow(outputs[-1])
        now += controller.period_ns
    left, right = controller.layout.arms
    np.testing.assert_allclose(outputs[90 + stale - 1].positions[left.joint_index], target, atol=1e-6)
    assert outputs[90 + stale - 1].positions[right.gripper_index] == pytest.approx(1.0)
    assert_within_limits(controller, outputs)
    assert abs(outputs[90 + stale].positions[0] - target[0]) < 1e-3, "fades in from where it held"


@pytest.mark.parametrize("button", ["trial_success", "trial_failure", "trial_abort"])
def test_a_trial_stop_button_under_the_policy_holds_the_arms_until_resume(button: str) -> None:
    """Hand-back at the end of a trial: the policy stops commanding and the arms hold; the operator resumes."""
    teleop = load_embodiment("widowx").teleop
    arbiter = Arbiter(teleop)
    pressed = [0] * BUTTONS
    pressed[getattr(teleop.buttons, button)] = 1
    events, transitions = arbiter.on_joy(parse_joy([0.0] * AXES, pressed, teleop, 0))
    assert events == [button] and [(t.previous, t.mode) for t in transitions] == [("policy", "hold")]
    released = parse_joy([0.0] * AXES, [0] * BUTTONS, teleop, 10 * MS)
    assert arbiter.on_joy(released)[1] == [] and arbiter.mode == "hold"
    resume = [0] * BUTTONS
    resume[teleop.buttons.resume_policy] = 1
    assert [t.mode for t in arbiter.on_joy(parse_joy([0.0] * AXES, resume, teleop, 20 * MS))[1]] == ["policy"]


# -- trials announced by the recorder ----------------------------------------------------------

def test_a_trial_ended_by_anyone_holds_the_policy_and_only_that_hold_ends_with_the_next_trial() -> None:
    """The recorder's announcement (contract.TRIAL_EVENT) acts whoever ended the trial; a hold that the
    operator or the e-stop caused is never lifted by a trial start, only by resume_policy."""
    teleop = load_embodiment("aloha").teleop
    arbiter = Arbiter(teleop)
    ended = arbiter.on_trial("ended", "trial_0001")
    assert ended is not None and (ended.previous, ended.mode) == ("policy", "hold")
    assert arbiter.on_trial("ended", "trial_0001") is None, "a second end changes nothing"
    started = arbiter.on_trial("started", "trial_0002")
    assert started is not None and (started.previous, started.mode) == ("hold", "policy")
    # The operator's hold: deadman pressed, then released.
    deadman = [0] * BUTTONS
    deadman[teleop.buttons.deadman] = 1
    arbiter.on_joy(parse_joy([0.0] * AXES, deadman, teleop, 0))
    assert arbiter.on_trial("ended", "trial_0002") is None and arbiter.mode == "teleop", "the operator keeps the arms"
    arbiter.on_joy(parse_joy([0.0] * AXES, [0] * BUTTONS, teleop, 10 * MS))
    assert arbiter.mode == "hold" and arbiter.on_trial("started", "trial_0003") is None and arbiter.mode == "hold"


def test_after_an_estop_a_trial_start_does_not_hand_the_arms_back() -> None:
    controller = make_controller("aloha")
    assert controller.trial_changed("ended", "trial_0001") is not None and controller.arbiter.mode == "hold"
    controller.engage_estop()
    controller.reset_estop()
    assert controller.trial_changed("started", "trial_0002") is None and controller.arbiter.mode == "hold"
    assert controller.active is None
    assert controller.status(0)["trial_event"] == "started trial_0002", "the state says what the controller heard"


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"change": "started"}', '{"trial": "t", "change": "paused"}',
                                  '{"trial": 3, "change": "ended"}'])
def test_a_malformed_trial_event_is_refused(text: str) -> None:
    from qwen_vla_ros.teleop.arbitration import parse_trial_event

    with pytest.raises(MalformedMessageError):
        parse_trial_event(text)
