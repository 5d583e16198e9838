"""Kinematic mock hardware (WidowX arm, differential base), command decoding, gripper conversions
and synthetic camera images: pure numpy, no ROS, no MuJoCo."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.embodiments.gripper import (
    finger_to_normalized,
    joint_to_normalized,
    normalized_to_finger,
    normalized_to_joint,
)
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.sim.commands import (
    ArmCommand,
    decode_forward_command,
    decode_joint_group,
    decode_joint_single,
    decode_joint_trajectory,
)
from qwen_vla_ros.sim.kinematic import KinematicBase, limited_step
from qwen_vla_ros.sim.world import Simulation

WIDOWX = load_embodiment("widowx")
ARM = WIDOWX.arm("arm")
BASE_CONFIG = load_embodiment("mobile_base")
ALOHA_GRIPPER = load_embodiment("aloha").arm("left").gripper


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(-2, 2), target=st.floats(-2, 2), velocity=st.floats(-1, 1),
    v_max=st.floats(0.5, 4), a_max=st.floats(1, 30),
)
def test_limited_step_respects_limits_and_settles_on_the_target(start, target, velocity, v_max, a_max) -> None:
    dt = 0.02
    velocity = float(np.clip(velocity, -v_max, v_max))
    position, speed = np.array([start]), np.array([velocity])
    speeds = [velocity]
    for _ in range(600):  # 4 rad at 0.5 rad/s takes 400 periods
        position, speed = limited_step(position, speed, np.array([target]), dt, np.array([v_max]), np.array([a_max]))
        speeds.append(float(speed[0]))
        if position[0] == target and speed[0] == 0.0:
            break
    assert max(abs(s) for s in speeds) <= v_max + 1e-9
    assert max(abs(b - a) for a, b in zip(speeds, speeds[1:])) <= a_max * dt + 1e-9
    assert position[0] == pytest.approx(target, abs=1e-6)
    assert speed[0] == pytest.approx(0.0, abs=1e-6)


def test_limited_step_does_not_overshoot_from_rest() -> None:
    position, speed = np.array([0.0]), np.array([0.0])
    trace = []
    for _ in range(300):
        position, speed = limited_step(position, speed, np.array([1.0]), 0.02, np.array([2.0]), np.array([5.0]))
        trace.append(position[0])
    assert max(trace) <= 1.0 + 1e-9
    assert np.all(np.diff(trace) >= -1e-12), "position must approach the target monotonically"


def test_widowx_joints_follow_commands_within_limits_in_the_interbotix_layout() -> None:
    sim = Simulation(WIDOWX)
    state = sim.arm_states()["arm"]
    assert state.names == ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
                           "left_finger", "right_finger")
    np.testing.assert_allclose(state.position[:6], WIDOWX.sim.initial_joints["arm"])
    target = [0.5, 0.2, -0.3, 0.4, -0.5, 1.0]
    sim.command_arm("arm", ArmCommand(dict(zip(ARM.joint_names, target)), ARM.gripper.joint_close))
    velocities = []
    for _ in range(150):
        sim.step()
        velocities.append(sim.arm_states()["arm"].velocity[:7])
    limits = [j.limits.velocity for j in ARM.joints] + [ARM.gripper.limits.velocity]
    assert np.all(np.abs(velocities) <= np.array(limits) + 1e-9)
    state = sim.arm_states()["arm"]
    np.testing.assert_allclose(state.position[:6], target, atol=1e-6)
    assert state.position[6] == pytest.approx(ARM.gripper.joint_close)
    assert state.position[7] == pytest.approx(ARM.gripper.finger_close)
    assert state.position[8] == pytest.approx(-ARM.gripper.finger_close)


def test_kinematic_arm_targets_are_clipped_to_joint_limits_and_reset_restores_the_start() -> None:
    sim = Simulation(WIDOWX)
    elbow = ARM.joints[2].limits
    sim.command_arm("arm", ArmCommand({"elbow": elbow.lower - 2.0}))
    for _ in range(200):
        sim.step()
    assert sim.arm_states()["arm"].position[2] == pytest.approx(elbow.lower)
    assert sim.reset(np.random.default_rng(0)) == {}
    np.testing.assert_allclose(sim.arm_states()["arm"].position[:6], WIDOWX.sim.initial_joints["arm"])


def _drive(base: KinematicBase, seconds: float, command: tuple[float, float] | None, start_s: float = 0.0,
           dt: float = 0.05) -> float:
    now = start_s
    for _ in range(round(seconds / dt)):
        if command is not None:
            base.command(*command, now)
        now += dt
        base.step(dt, now)
    return now


def test_base_integrates_velocity_within_speed_and_acceleration_limits() -> None:
    config = BASE_CONFIG.base
    base = KinematicBase(config, timeout_s=0.3)
    speeds = []
    now = 0.0
    for _ in range(40):
        base.command(5.0, 0.0, now)  # above max_linear: clipped
        now += 0.05
        base.step(0.05, now)
        speeds.append(base.state().linear)
    assert max(speeds) == pytest.approx(config.max_linear)
    assert max(np.diff([0.0, *speeds])) <= config.linear_acceleration * 0.05 + 1e-9
    state = base.state()
    # Ramp for 1 s at 1 m/s^2 (0.5 m), then 1 s at 1 m/s.
    assert state.x == pytest.approx(1.5, abs=0.03) and state.y == pytest.approx(0.0, abs=1e-9)


def test_base_turning_at_constant_speed_follows_a_circle() -> None:
    base = KinematicBase(BASE_CONFIG.base, timeout_s=0.3)
    now = _drive(base, 2.0, (0.5, 0.5))  # ramp up to speed
    start = base.state()
    assert (start.linear, start.angular) == (0.5, 0.5)
    revolution_s = 2 * math.pi / 0.5  # radius v / w = 1 m
    _drive(base, revolution_s, (0.5, 0.5), start_s=now, dt=revolution_s / 250)
    end = base.state()
    assert (end.x, end.y) == pytest.approx((start.x, start.y), abs=1e-9)
    assert math.remainder(end.yaw - start.yaw, 2 * math.pi) == pytest.approx(0.0, abs=1e-9)


def test_base_stops_after_the_cmd_vel_timeout() -> None:
    base = KinematicBase(BASE_CONFIG.base, timeout_s=0.3)
    now = _drive(base, 2.0, (0.5, 0.0))
    assert base.state().linear == pytest.approx(0.5)
    now = _drive(base, 0.25, None, start_s=now)
    assert base.state().linear == pytest.approx(0.5), "still inside the 300 ms timeout"
    _drive(base, 1.0, None, start_s=now)
    assert base.state().linear == 0.0
    with pytest.raises(MalformedMessageError, match="finite"):
        base.command(float("nan"), 0.0, 0.0)


def test_forward_command_needs_the_joints_and_the_gripper() -> None:
    command = decode_forward_command([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.2], ARM)
    assert command.joints == dict(zip(ARM.joint_names, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert command.gripper_angle == 1.2
    with pytest.raises(MalformedMessageError, match="needs 7 values"):
        decode_forward_command([0.0] * 6, ARM)
    with pytest.raises(MalformedMessageError, match="non-finite values at indices \\[2\\]"):
        decode_forward_command([0.0, 0.0, float("nan"), 0.0, 0.0, 0.0, 1.0], ARM)


def test_joint_trajectory_takes_one_point_with_driver_names() -> None:
    command = decode_joint_trajectory(["elbow", "gripper"], [[0.3, 0.9]], ARM)
    assert command == ArmCommand({"elbow": 0.3}, 0.9)
    with pytest.raises(MalformedMessageError, match="exactly one point"):
        decode_joint_trajectory(["elbow"], [[0.1], [0.2]], ARM)
    with pytest.raises(MalformedMessageError, match="'left/elbow'"):
        decode_joint_trajectory(["left/elbow"], [[0.1]], ARM)
    with pytest.raises(MalformedMessageError, match="1 joint names but 2 positions"):
        decode_joint_trajectory(["elbow"], [[0.1, 0.2]], ARM)


def test_interbotix_group_and_single_commands() -> None:
    assert decode_joint_group("arm", [0.0] * 6, ARM, "arm").joints == dict.fromkeys(ARM.joint_names, 0.0)
    assert decode_joint_single("gripper", 1.1, ARM, "gripper") == ArmCommand(gripper_angle=1.1)
    assert decode_joint_single("waist", 0.4, ARM, "gripper") == ArmCommand({"waist": 0.4})
    with pytest.raises(MalformedMessageError, match="unknown group 'arms'"):
        decode_joint_group("arms", [0.0] * 6, ARM, "arm")
    with pytest.raises(MalformedMessageError, match="unknown joint 'thumb'"):
        decode_joint_single("thumb", 0.0, ARM, "gripper")


@given(st.floats(0, 1))
def test_gripper_conversions_round_trip(opening: float) -> None:
    gripper = ALOHA_GRIPPER
    assert joint_to_normalized(normalized_to_joint(opening, gripper), gripper) == pytest.approx(opening, abs=1e-12)
    assert finger_to_normalized(normalized_to_finger(opening, gripper), gripper) == pytest.approx(opening, abs=1e-9)
    assert normalized_to_joint(1.0, gripper) == gripper.joint_open
    assert normalized_to_finger(0.0, gripper) == gripper.finger_close


def test_synthetic_images_follow_the_simulated_state() -> None:
    base_sim = Simulation(BASE_CONFIG)
    renderer = base_sim.make_renderer()
    before = renderer.render(base_sim.snapshot())["cam_front"]
    assert before.shape == (BASE_CONFIG.sim.render_height, BASE_CONFIG.sim.render_width, 3)
    for _ in range(20):
        base_sim.command_base(0.5, 0.3)
        base_sim.step()
    after = renderer.render(base_sim.snapshot())["cam_front"]
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 5, "the floor must move with the base"

    arm_sim = Simulation(WIDOWX)
    renderer = arm_sim.make_renderer()
    opened = renderer.render(arm_sim.snapshot())["cam_main"]
    arm_sim.command_arm("arm", ArmCommand(gripper_angle=ARM.gripper.joint_close))
    for _ in range(100):
        arm_sim.step()
    closed = renderer.render(arm_sim.snapshot())["cam_main"]
    assert opened[..., 1].max() > 200 and closed[..., 0].max() > 200, "green when open, red when closed"
