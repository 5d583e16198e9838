"""Hostile feedback against the control core: whatever the joint states and odometry say, every
command stays finite and inside limits read from the YAML file and the URDF, a message that
cannot be used is refused and counted, and a stream without usable messages makes the
controller hold.

Per period and per arm, hypothesis picks what the driver publishes: a good message (the
robot follows every command, helpers.robots.FollowingRobot), NaN or +-inf at one joint or at
the finger, a joint missing, an extra joint, the names reordered, a stamp going backwards,
or nothing at all (a silent arm). The base's odometry gets NaN or inf in the pose or the
twist, backwards stamps or silence. The policy sends one chunk that moves every channel, so
the controller is running, not merely holding, when the feedback turns bad. The very first
message of a stream may already be bad: that is where a NaN once became the start pose.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.limits import judged_limits
from helpers.robots import T0_NS, FollowingRobot, make_controller, rate_limit_violations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.control import Controller
from qwen_vla_ros.errors import MalformedMessageError

ARM_EVENTS = ("good", "nan", "inf", "finger_nan", "missing", "extra", "reordered", "backwards", "silent")
ODOMETRY_EVENTS = ("good", "nan_pose", "nan_twist", "inf_twist", "backwards", "silent")
BAD = {"nan", "inf", "finger_nan", "missing", "nan_pose", "nan_twist", "inf_twist"}
"""Events whose message cannot be used: the controller must refuse and count each one."""

PERIODS = 40


def arm_message(robot: FollowingRobot, arm_index: int, event: str, rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """What the driver of one arm publishes for ``event`` (names, positions)."""
    layout = robot.controller.layout.arms[arm_index]
    names = list(layout.arm.joint_names)
    values = [float(v) for v in robot.positions[layout.joint_index]]
    if layout.gripper is not None and layout.gripper_index is not None:
        g = layout.gripper
        names.append(g.finger_joint)
        values.append(g.finger_close + robot.positions[layout.gripper_index] * (g.finger_open - g.finger_close))
    joint = int(rng.integers(len(layout.arm.joint_names)))
    if event == "nan":
        values[joint] = math.nan
    elif event == "inf":
        values[joint] = math.inf if rng.random() < 0.5 else -math.inf
    elif event == "finger_nan" and layout.gripper is not None:
        values[-1] = math.nan
    elif event == "missing":
        del names[joint], values[joint]
    elif event == "extra":
        names.append("not_a_joint")
        values.append(math.nan)  # an unknown joint's value is none of the controller's business
    elif event == "reordered":
        order = rng.permutation(len(names))
        names, values = [names[i] for i in order], [values[i] for i in order]
    return names, values


@st.composite
def feedback_script(draw: st.DrawFn, arms: int, base: bool) -> list[tuple[tuple[str, ...], str]]:
    """Per period: one event per arm and one for the odometry. Mostly good, so the robot runs."""
    arm_event = st.one_of(st.just("good"), st.sampled_from(ARM_EVENTS))
    odometry_event = st.one_of(st.just("good"), st.sampled_from(ODOMETRY_EVENTS)) if base else st.just("silent")
    period = st.tuples(st.tuples(*[arm_event] * arms), odometry_event)
    return draw(st.lists(period, min_size=PERIODS, max_size=PERIODS))


def moving_chunk(controller: Controller, now_ns: int) -> ActionChunk:
    """A chunk that moves every channel a little around the middle of its range, for the whole run."""
    limits = judged_limits(controller.config.name, controller.policy.names) \
        if controller.config.commands_are_actions else None
    dt = controller.config.control.action_dt
    steps = math.ceil(PERIODS * controller.period_s / dt) + 10
    phase = np.arange(steps)[:, None] * dt
    if limits is None:  # waypoints: a point ahead of the robot
        rows = np.column_stack([0.02 * np.arange(steps), np.zeros(steps), np.zeros(steps)])
    else:
        middle = np.where(np.isfinite(limits.lower + limits.upper), (limits.lower + limits.upper) / 2, 0.0)
        swing = 0.1 * np.minimum(limits.upper - limits.lower, 2.0)
        rows = middle + swing * np.sin(2 * np.pi * phase)
    return ActionChunk(rows, controller.policy.names, dt, now_ns)


def run_script(embodiment: str, script, seed: int) -> Controller:
    rng = np.random.default_rng(seed)
    controller = make_controller(embodiment)
    layout = controller.layout
    judged = judged_limits(embodiment, layout.names)
    start = np.clip(np.zeros(len(layout)), judged.lower, judged.upper)
    robot = FollowingRobot(controller, start)
    timeout_ns = round(controller.config.safety.joint_state_timeout_s * NS_PER_S)
    streams = [arm.name for arm in layout.arms] + (["odometry"] if controller.feedback.odometry_required else [])
    last_good: dict[str, int | None] = dict.fromkeys(streams)
    refused = 0
    outputs, modes = [], []
    submitted = False
    for period, (arm_events, odometry_event) in enumerate(script):
        now = T0_NS + period * controller.period_ns
        for index, event in enumerate(arm_events):
            if event == "silent":
                continue
            names, values = arm_message(robot, index, event, rng)
            stamp = now - int(rng.integers(1, 10)) * NS_PER_S if event == "backwards" else now
            if event in BAD:
                with pytest.raises(MalformedMessageError):
                    controller.update_joint_state(layout.arms[index].name, names, values, stamp, now)
                refused += 1
            else:
                controller.update_joint_state(layout.arms[index].name, names, values, stamp, now)
                last_good[layout.arms[index].name] = now
        if layout.base is not None and odometry_event != "silent":
            pose = robot.pose.copy()
            twist = robot.positions[layout.base.command_index].copy()
            if odometry_event == "nan_pose":
                pose[int(rng.integers(3))] = math.nan
            elif odometry_event == "nan_twist":
                twist[int(rng.integers(2))] = math.nan
            elif odometry_event == "inf_twist":
                twist[int(rng.integers(2))] = -math.inf
            stamp = now - NS_PER_S if odometry_event == "backwards" else now
            if odometry_event in BAD:
                with pytest.raises(MalformedMessageError):
                    controller.update_odometry(pose, twist, stamp, now)
                refused += 1
            else:
                controller.update_odometry(pose, twist, stamp, now)
                if "odometry" in last_good:
                    last_good["odometry"] = now
        if not submitted and controller.feedback.ready():
            controller.submit(moving_chunk(controller, now), now)
            submitted = True
        output = controller.step(now)
        ready = all(t is not None for t in last_good.values())
        assert (output is not None) == ready, "commands start once every stream gave one usable message"
        robot.follow(output)
        if output is None:
            continue
        assert np.all(np.isfinite(output.positions)), f"non-finite command {output.positions} after {arm_events}"
        stale = any(now - t > timeout_ns for t in last_good.values())
        if stale:
            assert output.mode in ("stale", "estop"), f"no usable feedback for over the timeout, yet {output.mode}"
        else:
            assert output.mode != "stale"
        outputs.append(output)
        modes.append(output.mode)
    assert controller.bad_feedback == refused, "every refused message is counted in the diagnostics"
    if outputs:
        positions = np.array([o.positions for o in outputs])
        assert np.all(positions >= judged.lower - 1e-12) and np.all(positions <= judged.upper + 1e-12)
        too_fast, too_sharp = rate_limit_violations(judged, positions, np.array([o.stamp_ns for o in outputs]),
                                                    controller.period_s)
        # Documented exemption: a base's (v, omega) drops to zero at once when the controller stops.
        stopping = (np.array([m != "running" for m in modes])[:, None] & (positions == 0.0) & layout.velocity_channel)
        assert not (too_fast & ~stopping[1:]).any(), f"velocity limit broken at {np.argwhere(too_fast)[:3].tolist()}"
        assert not (too_sharp & ~(stopping[2:] | stopping[1:-1])).any(), \
            f"acceleration limit broken at {np.argwhere(too_sharp)[:3].tolist()}"
    return controller


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(script=feedback_script(arms=2, base=False), seed=st.integers(0, 2**32 - 1))
def test_aloha_hostile_joint_states_never_make_a_bad_command(script, seed: int) -> None:
    run_script("aloha", script, seed)


@FUZZ
@given(script=feedback_script(arms=2, base=True), seed=st.integers(0, 2**32 - 1))
def test_aloha_mobile_hostile_joint_states_and_odometry_never_make_a_bad_command(script, seed: int) -> None:
    run_script("aloha_mobile", script, seed)


@FUZZ
@given(script=feedback_script(arms=0, base=True), seed=st.integers(0, 2**32 - 1))
def test_mobile_base_hostile_odometry_never_makes_a_bad_command(script, seed: int) -> None:
    run_script("mobile_base", script, seed)


def test_a_silent_arm_makes_the_controller_hold_and_count_a_stale_event() -> None:
    """A fixed script for the property the fuzz draws at random: one arm stops publishing while
    the other carries on; after the timeout the controller holds (mode ``stale``), the
    diagnostics count one stale event, and every command stays put."""
    script = [(("good", "good"), "silent")] * 10 + [(("good", "silent"), "silent")] * 30
    controller = run_script("aloha", script, seed=0)
    assert controller.mode == "stale" and controller.status(T0_NS)["stale_events"] == 1
