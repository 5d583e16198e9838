"""The Interbotix preflight's decisions (no ROS): the config against what an xs_sdk driver answers.

The driver's answers are built from the public vx300s facts (shared/reference/robots.md:
joint names, joint-state layout, limits, velocity about pi) rounded to float32 as the
driver sends them; the expected config values are read from config/aloha.yaml itself.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.config.hardware import InterbotixOutput
from qwen_vla_ros.control.preflight import (
    ArmAnswers,
    DriverInfo,
    ModeWrite,
    PreflightRefused,
    RegisterWrite,
    check_arm,
    configure_writes,
)

REPO = Path(__file__).resolve().parent.parent
ALOHA_YAML = yaml.safe_load((REPO / "config" / "aloha.yaml").read_text())
VX300S_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
# robots.md: vx300s ranges (gym-aloha MJCF), velocity about pi rad/s; joint states list the 6 joints,
# gripper, then left_finger and right_finger.
VX300S_RANGES = {"waist": (-3.14158, 3.14158), "shoulder": (-1.85005, 1.25664), "elbow": (-1.76278, 1.6057),
                 "forearm_roll": (-3.14158, 3.14158), "wrist_angle": (-1.8675, 2.23402),
                 "wrist_rotate": (-3.14158, 3.14158)}
JOINT_STATE_NAMES = (*VX300S_JOINTS, "gripper", "left_finger", "right_finger")


def f32(values: list[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32))


def driver_group(**changes: object) -> DriverInfo:
    info = DriverInfo(
        mode="position", joint_names=VX300S_JOINTS,
        lower_limits=f32([VX300S_RANGES[j][0] for j in VX300S_JOINTS]),
        upper_limits=f32([VX300S_RANGES[j][1] for j in VX300S_JOINTS]),
        velocity_limits=f32([math.pi] * 6), state_indices=(0, 1, 2, 3, 4, 5),
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def driver_gripper(**changes: object) -> DriverInfo:
    # The driver answers for the gripper with its left finger: limits in metres, index of left_finger.
    info = DriverInfo(mode="current_based_position", joint_names=("gripper",), lower_limits=f32([0.021]),
                      upper_limits=f32([0.057]), velocity_limits=f32([1.0]), state_indices=(7,))
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def aloha() -> tuple:
    config = load_embodiment("aloha")
    output = next(o for o in config.outputs if isinstance(o, InterbotixOutput))
    return config.arm("left"), output


def yaml_limit(joint: str, bound: str) -> float:
    return float(ALOHA_YAML["x-limits"][joint][bound])


def answers(group: DriverInfo | None = None, gripper: DriverInfo | None = None,
            names: tuple[str, ...] | None = JOINT_STATE_NAMES) -> ArmAnswers:
    return ArmAnswers(group or driver_group(), gripper or driver_gripper(), names)


def test_a_driver_that_matches_the_config_passes(aloha) -> None:
    arm, output = aloha
    assert check_arm(arm, output, answers()) == []


def test_an_arm_group_not_in_position_mode_is_refused_naming_both_modes(aloha) -> None:
    arm, output = aloha
    (mismatch,) = check_arm(arm, output, answers(group=driver_group(mode="velocity")))
    assert (mismatch.arm, mismatch.joint, mismatch.config, mismatch.driver) == ("left", "arm", "position", "velocity")
    assert "operating mode" in str(mismatch)


def test_a_pwm_gripper_is_refused(aloha) -> None:
    """A pwm gripper would read the adapter's motor angle as a PWM value."""
    arm, output = aloha
    (mismatch,) = check_arm(arm, output, answers(gripper=driver_gripper(mode="pwm")))
    expected_mode = ALOHA_YAML["outputs"][0]["preflight"]["gripper_mode"]
    assert (mismatch.joint, mismatch.config, mismatch.driver) == ("gripper", expected_mode, "pwm")


@pytest.mark.parametrize(("joint", "field", "bound", "driver_value"), [
    ("shoulder", "upper_limits", "upper", 1.2),
    ("elbow", "lower_limits", "lower", -1.7),
    ("wrist_angle", "velocity_limits", "velocity", 2.0),
])
def test_a_config_limit_outside_the_drivers_is_refused_naming_joint_and_both_values(
        aloha, joint: str, field: str, bound: str, driver_value: float) -> None:
    arm, output = aloha
    group = driver_group()
    values = list(getattr(group, field))
    values[VX300S_JOINTS.index(joint)] = driver_value
    (mismatch,) = check_arm(arm, output, answers(group=dataclasses.replace(group, **{field: tuple(values)})))
    assert mismatch.arm == "left" and mismatch.joint == joint and bound in mismatch.check
    assert float(mismatch.config) == pytest.approx(yaml_limit(joint, bound), abs=1e-5)
    assert float(mismatch.driver) == pytest.approx(driver_value, abs=1e-6)


def test_the_drivers_float32_rounding_of_the_same_limit_is_not_a_mismatch(aloha) -> None:
    """float32(3.14158) differs from the YAML's 3.14158 in the 8th digit: within limit_tolerance."""
    arm, output = aloha
    assert abs(float(np.float32(3.14158)) - 3.14158) > 0
    assert check_arm(arm, output, answers()) == []


def test_joint_names_in_another_order_are_refused_at_the_first_position_that_differs(aloha) -> None:
    arm, output = aloha
    swapped = ("waist", "shoulder", "elbow", "wrist_angle", "forearm_roll", "wrist_rotate")
    found = check_arm(arm, output, answers(group=driver_group(joint_names=swapped)))
    assert [(m.joint, m.config, m.driver) for m in found if "name" in m.check] == [
        ("forearm_roll", "forearm_roll", "wrist_angle"), ("wrist_angle", "wrist_angle", "forearm_roll")]


def test_a_joint_state_message_in_another_order_than_the_drivers_indices_is_refused(aloha) -> None:
    arm, output = aloha
    names = ("shoulder", "waist", *JOINT_STATE_NAMES[2:])
    found = check_arm(arm, output, answers(names=names))
    assert [(m.joint, m.driver) for m in found] == [("waist", "'shoulder'"), ("shoulder", "'waist'")]


def test_a_silent_driver_is_refused_for_group_gripper_and_joint_states(aloha) -> None:
    arm, output = aloha
    found = check_arm(arm, output, ArmAnswers(None, None, None))
    assert {m.joint for m in found} == {"joint_states", "arm", "gripper"}
    timeout = ALOHA_YAML["outputs"][0]["preflight"]["timeout_s"]
    assert all(m.driver == f"no answer within {timeout:g} s" for m in found)


def test_the_refusal_message_names_every_mismatch(aloha) -> None:
    arm, output = aloha
    found = check_arm(arm, output, answers(group=driver_group(mode="current"), gripper=driver_gripper(mode="pwm")))
    message = str(PreflightRefused(found))
    assert "arm 'left', joint 'arm': operating mode: config position, driver current" in message
    assert "joint 'gripper'" in message and "driver pwm" in message and "no command will be sent" in message


def test_configure_writes_the_yaml_modes_then_the_gripper_current_limit(aloha) -> None:
    arm, output = aloha
    entry = ALOHA_YAML["outputs"][0]
    profile = (entry["configure"]["profile_type"], entry["configure"]["profile_velocity"],
               entry["configure"]["profile_acceleration"])
    assert configure_writes(arm, output) == [
        ModeWrite("group", "arm", entry["preflight"]["arm_mode"], *profile),
        ModeWrite("single", "gripper", entry["preflight"]["gripper_mode"], *profile),
        RegisterWrite("single", "gripper", entry["configure"]["gripper_current_register"],
                      entry["configure"]["gripper_current_limit"]),
    ]


def test_a_gripper_mode_that_does_not_read_a_motor_angle_is_a_config_error() -> None:
    from qwen_vla_ros.config import ConfigError

    with pytest.raises(ConfigError, match="gripper_mode"):
        load_embodiment("aloha", {"outputs": [{"adapter": "interbotix", "arms": ["left", "right"],
                                               "preflight": {"gripper_mode": "pwm"}}]})


# -- start pose ---------------------------------------------------------------------------

def test_the_start_pose_is_reached_within_the_yaml_limits_and_judged_from_joint_states() -> None:
    """From all-zero joints to ALOHA's START_ARM_POSE (robots.md) through the controller's own safety stages."""
    from helpers.limits import judged_limits
    from helpers.robots import FollowingRobot, make_controller, rate_limit_violations, run

    from qwen_vla_ros.control.start_pose import StartPoseSource

    controller = make_controller("aloha")
    robot = FollowingRobot(controller, np.zeros(len(controller.layout)))
    start_ns = 1_000_000_000
    outputs, now = run(controller, robot, start_ns, 5)  # started, holding where the arms are
    source = StartPoseSource(controller.layout, controller.config.start_pose)
    controller.add_source(source)
    assert not source.arrived(controller.feedback.measured(), controller.safety.position)
    source.begin(controller.safety.position)
    controller.select_source(source.name)
    periods = 0
    while not source.arrived(controller.feedback.measured(), controller.safety.position) and periods < 500:
        more, now = run(controller, robot, now + controller.period_ns, 1)
        outputs += more
        periods += 1
    yaml_pose = ALOHA_YAML["start_pose"]
    measured = controller.feedback.measured()
    assert source.arrived(measured, controller.safety.position), source.errors(measured)
    for arm in controller.layout.arms:
        np.testing.assert_allclose(controller.feedback.measured()[arm.joint_index], yaml_pose["joints"][arm.name],
                                   atol=yaml_pose["tolerance_rad"])
    assert periods * controller.period_s < yaml_pose["timeout_s"]
    positions = np.array([o.positions for o in outputs])
    stamps = np.array([o.stamp_ns for o in outputs])
    too_fast, too_sharp = rate_limit_violations(judged_limits("aloha", controller.layout.names), positions, stamps,
                                                controller.period_s)
    assert not too_fast.any() and not too_sharp.any()
    # The grippers went to the YAML's start_pose.grippers too, within their own limits, but arrival is judged
    # on the joints alone (a gripper may be stopped by what it holds).
    more, now = run(controller, robot, now + controller.period_ns, 25)
    for arm in controller.layout.arms:
        assert more[-1].positions[arm.gripper_index] == pytest.approx(yaml_pose["grippers"][arm.name], abs=1e-9)


def test_a_start_pose_outside_a_joint_limit_or_for_an_unknown_arm_is_a_config_error() -> None:
    from qwen_vla_ros.config import ConfigError

    shoulder_lower = ALOHA_YAML["x-limits"]["shoulder"]["lower"]
    with pytest.raises(ConfigError, match="shoulder"):
        load_embodiment("aloha", {"start_pose.joints.left": [0.0, shoulder_lower - 0.1, 1.16, 0.0, -0.3, 0.0]})
    with pytest.raises(ConfigError, match="unknown arm 'middle'"):
        load_embodiment("aloha", {"start_pose.joints": {"middle": [0.0] * 6}})
    with pytest.raises(ConfigError, match="5 values for 6 joints"):
        load_embodiment("aloha", {"start_pose.joints.left": [0.0] * 5})
    with pytest.raises(ConfigError, match="grippers"):
        load_embodiment("aloha", {"start_pose.grippers.left": 1.5})  # normalised: 1 is fully open
    with pytest.raises(ConfigError, match="start_pose.joints does not pose"):
        load_embodiment("aloha", {"start_pose.joints": {"left": ALOHA_YAML["start_pose"]["joints"]["left"]},
                                  "start_pose.grippers": {"right": 1.0}})
