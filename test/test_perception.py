"""The policy node's input side without ROS: image checks and preparation, the state vector,
and observation sync."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.readings import START_POSE, aloha_joints

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.config.runtime import ObservationSync as SyncSettings
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.perception.images import ImageHeader, header_problem, model_rgb, size_mismatch
from qwen_vla_ros.perception.state import Odometry, StateAssembler
from qwen_vla_ros.perception.sync import Observation, ObservationSync, Skip, SkipReason

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


# ---------------------------------------------------------------------------- images
@pytest.mark.parametrize("encoding, words", [("mono8", ["mono8", "colour"]), ("16UC1", ["16UC1"]), ("yuv422", ["yuv422"])])
def test_non_colour_encodings_are_rejected_naming_the_camera(encoding: str, words: list[str]) -> None:
    problem = header_problem("cam_low", ImageHeader(encoding, 64, 48, 64, 64 * 48))
    assert problem is not None and "'cam_low'" in problem and all(w in problem for w in words)


def test_colour_frames_pass_and_short_buffers_do_not() -> None:
    assert header_problem("cam", ImageHeader("bgr8", 64, 48, 192, 192 * 48)) is None
    assert "too small" in header_problem("cam", ImageHeader("rgb8", 64, 48, 192, 192 * 48 - 1))
    assert "too small" in header_problem("cam", ImageHeader("rgb8", 64, 48, 100, 100 * 48))


def test_size_mismatch_names_both_sizes() -> None:
    assert size_mismatch("cam", ImageHeader("rgb8", 64, 48, 192, 0), 64, 48) is None
    message = size_mismatch("cam_high", ImageHeader("rgb8", 320, 240, 960, 0), 640, 480)
    assert "'cam_high'" in message and "320x240" in message and "640x480" in message


def test_model_rgb_swaps_bgr_and_resizes() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(model_rgb(bgr, "bgr8", 48, 64), rgb)
    np.testing.assert_array_equal(model_rgb(rgb, "rgb8", 48, 64), rgb)
    np.testing.assert_array_equal(model_rgb(bgr, "bgr8", 24, 32), model_rgb(rgb, "rgb8", 24, 32))
    solid = np.empty((480, 640, 3), np.uint8)
    solid[:] = (10, 20, 30)
    small = model_rgb(solid, "bgr8", 64, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert np.all(small == (30, 20, 10))
    with pytest.raises(MalformedMessageError, match="mono8"):
        model_rgb(solid[:, :, 0], "mono8", 64, 64)


# ---------------------------------------------------------------------------- state
def test_aloha_state_reads_joints_and_normalises_the_gripper_from_the_finger() -> None:
    config = load_embodiment("aloha")
    assembler = StateAssembler(config)
    assert assembler.readings == ("left", "right")
    for opening in (0.0, 0.25, 1.0):
        state = assembler.assemble(aloha_joints(config, opening), None)
        assert state.shape == (14,)
        np.testing.assert_allclose(state[:6], START_POSE)
        assert state[6] == pytest.approx(opening) and state[13] == pytest.approx(opening)


def test_gripper_from_the_motor_joint_when_configured() -> None:
    config = load_embodiment("aloha", {"arms.0.gripper.state_from": "joint"})
    gripper = config.arms[0].gripper
    readings = aloha_joints(config)
    readings["left"][gripper.joint] = gripper.joint_close + 0.3 * (gripper.joint_open - gripper.joint_close)
    assert StateAssembler(config).assemble(readings, None)[6] == pytest.approx(0.3)


def test_widowx_end_effector_pose_from_forward_kinematics() -> None:
    config = load_embodiment("widowx")
    arm = config.arms[0]
    assembler = StateAssembler(config)
    home_x, home_z = arm.kinematics.home[0][3], arm.kinematics.home[2][3]

    def state(**angles: float) -> np.ndarray:
        joints = {name: angles.get(name, 0.0) for name in arm.joint_names}
        g = arm.gripper
        return assembler.assemble({arm.name: {**joints, g.joint: 1.0, g.finger_joint: g.finger_open}}, None)

    np.testing.assert_allclose(state(), [home_x, 0, home_z, 0, 0, 0, 1.0], atol=1e-9)
    turned = state(waist=0.3)  # the whole arm yaws about the base's z axis
    np.testing.assert_allclose(turned[:6], [home_x * math.cos(0.3), home_x * math.sin(0.3), home_z, 0, 0, 0.3], atol=1e-9)
    tilted = state(wrist_angle=0.2)  # a rotation about y alone is pure pitch
    assert tilted[4] == pytest.approx(0.2) and tilted[3] == pytest.approx(0) and tilted[5] == pytest.approx(0)


def test_odometry_channels_and_reading_errors() -> None:
    config = load_embodiment("mobile_base")
    assembler = StateAssembler(config)
    assert assembler.readings == ("base",)
    np.testing.assert_allclose(assembler.assemble({}, Odometry(0.4, -0.2)), [0.4, -0.2])
    with pytest.raises(MalformedMessageError, match="odometry"):
        assembler.assemble({}, None)
    with pytest.raises(MalformedMessageError, match="base_angular"):
        assembler.assemble({}, Odometry(0.4, float("nan")))
    aloha = load_embodiment("aloha")
    readings = aloha_joints(aloha)
    del readings["right"]["elbow"]
    with pytest.raises(MalformedMessageError, match="'right' has no joint 'elbow'"):
        StateAssembler(aloha).assemble(readings, None)


# ---------------------------------------------------------------------------- sync
def aloha_sync(**settings: float) -> tuple[ObservationSync, object]:
    config = load_embodiment("aloha")
    sync = ObservationSync([c.name for c in config.cameras], StateAssembler(config), SyncSettings(**settings))
    return sync, config


def feed(sync: ObservationSync, config, camera_stamps: dict[str, int], state_stamp: int) -> None:
    for camera, stamp in camera_stamps.items():
        sync.add_frame(camera, stamp, f"{camera}@{stamp}", stamp)
    for arm, positions in aloha_joints(config).items():
        sync.add_joints(arm, state_stamp, positions, state_stamp)


CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


def test_observation_stamp_is_the_oldest_camera_and_frames_pair_with_the_laggard() -> None:
    sync, config = aloha_sync()
    # cam_low runs at 10 Hz, the others at 30 Hz; the newest cam_low frame is the laggard.
    for k in range(6):
        t = T0 + k * 33 * MS
        feed(sync, config, {c: t + i * MS for i, c in enumerate(CAMERAS) if c != "cam_low"}, t)
    sync.add_frame("cam_low", T0 + 70 * MS, "low", T0 + 70 * MS)
    observation = sync.assemble(T0 + 200 * MS)
    assert isinstance(observation, Observation)
    # nearest to the laggard's 70 ms: the 66 ms tick of the others (+0, +2, +3 ms)
    assert observation.frame_stamps == {"cam_high": T0 + 66 * MS, "cam_low": T0 + 70 * MS,
                                        "cam_left_wrist": T0 + 68 * MS, "cam_right_wrist": T0 + 69 * MS}
    assert observation.stamp_ns == T0 + 66 * MS
    assert observation.frames["cam_low"] == "low"
    assert observation.reading_stamps == {"left": T0 + 66 * MS, "right": T0 + 66 * MS}
    assert observation.state.shape == (14,)


def test_missing_stale_and_unsynced_cameras_are_named() -> None:
    sync, config = aloha_sync(sync_tolerance_s=0.02, max_age_s=0.5)
    feed(sync, config, {c: T0 for c in CAMERAS if c != "cam_left_wrist"}, T0)
    skip = sync.assemble(T0 + 10 * MS)
    assert isinstance(skip, Skip) and (skip.reason, skip.subject) == (SkipReason.CAMERA_MISSING, "cam_left_wrist")

    sync.add_frame("cam_left_wrist", T0 + 60 * MS, "late", T0 + 60 * MS)
    skip = sync.assemble(T0 + 70 * MS)
    assert (skip.reason, skip.subject) == (SkipReason.CAMERAS_UNSYNCED, "cam_left_wrist")
    assert "0.02" in skip.message

    skip = sync.assemble(T0 + 600 * MS)
    assert (skip.reason, skip.subject) == (SkipReason.CAMERA_STALE, "cam_high") and "0.600 s old" in skip.message

    sync2, _ = aloha_sync(max_age_s=0.5)
    feed(sync2, config, {c: T0 + (900 * MS if c == "cam_low" else 0) for c in CAMERAS}, T0)
    skip = sync2.assemble(T0 + 10 * MS)
    assert (skip.reason, skip.subject) == (SkipReason.CAMERA_STALE, "cam_low") and "future" in skip.message


def test_joint_states_must_be_close_to_the_observation() -> None:
    sync, config = aloha_sync(state_tolerance_s=0.03)
    for camera in CAMERAS:
        sync.add_frame(camera, T0, camera, T0)
    skip = sync.assemble(T0 + 5 * MS)
    assert (skip.reason, skip.subject) == (SkipReason.STATE_MISSING, "left")
    sync.add_joints("left", T0 - 80 * MS, aloha_joints(config)["left"], T0)
    sync.add_joints("right", T0 + 10 * MS, aloha_joints(config)["right"], T0)
    skip = sync.assemble(T0 + 5 * MS)
    assert (skip.reason, skip.subject) == (SkipReason.STATE_UNSYNCED, "left") and "-0.080 s" in skip.message
    broken = aloha_joints(config)["left"]
    del broken["left_finger"]
    sync.add_joints("left", T0 + 1 * MS, broken, T0)
    skip = sync.assemble(T0 + 5 * MS)
    assert skip.reason == SkipReason.STATE_INVALID and "left_finger" in skip.message
    sync.add_joints("left", T0, aloha_joints(config)["left"], T0)  # nearer than the broken one
    assert isinstance(sync.assemble(T0 + 5 * MS), Observation)


def test_a_bug_assembling_the_state_is_raised_not_skipped_as_bad_state() -> None:
    """Only a MalformedMessageError is an unusable state (a skip). A position that is not a number
    cannot come from a JointState (rclpy types its fields): it is a caller's bug, and the ValueError
    float() raises for it propagates instead of reading as bad state."""
    sync, config = aloha_sync()
    for camera in CAMERAS:
        sync.add_frame(camera, T0, camera, T0)
    sync.add_joints("right", T0, aloha_joints(config)["right"], T0)
    sync.add_joints("left", T0, {**aloha_joints(config)["left"], "waist": "not a number"}, T0)
    with pytest.raises(ValueError, match="not a number") as raised:
        sync.assemble(T0 + 5 * MS)
    assert not isinstance(raised.value, MalformedMessageError)


def test_only_newer_observations_and_unstamped_messages_take_the_receive_time() -> None:
    sync, config = aloha_sync()
    feed(sync, config, {c: T0 for c in CAMERAS}, T0)
    assert isinstance(sync.assemble(T0 + MS, newer_than_ns=T0 - 1), Observation)
    assert sync.assemble(T0 + MS, newer_than_ns=T0).reason == SkipReason.WAITING
    for camera in CAMERAS:
        sync.add_frame(camera, 0, camera, T0 + 20 * MS)
    assert sync.assemble(T0 + 30 * MS, newer_than_ns=T0).stamp_ns == T0 + 20 * MS
    sync.drop_camera("cam_low")
    assert sync.assemble(T0 + 30 * MS).subject == "cam_low"


def test_an_embodiment_without_cameras_is_stamped_by_its_readings() -> None:
    config = load_embodiment("mobile_base", {"cameras": []})
    sync = ObservationSync([], StateAssembler(config), SyncSettings())
    assert sync.assemble(T0).reason == SkipReason.STATE_MISSING
    sync.add_odometry(T0, Odometry(0.1, 0.0), T0)
    observation = sync.assemble(T0 + MS)
    assert observation.stamp_ns == T0 and observation.frames == {}
    np.testing.assert_allclose(observation.state, [0.1, 0.0])


def test_frames_delivered_out_of_order_are_kept_in_stamp_order() -> None:
    sync, config = aloha_sync()
    feed(sync, config, {c: T0 + 30 * MS for c in CAMERAS}, T0 + 30 * MS)
    for camera in CAMERAS:
        sync.add_frame(camera, T0 + 10 * MS, "older", T0 + 31 * MS)  # a callback thread that ran late
    observation = sync.assemble(T0 + 40 * MS)
    assert observation.stamp_ns == T0 + 30 * MS and observation.frames["cam_low"] == f"cam_low@{T0 + 30 * MS}"
