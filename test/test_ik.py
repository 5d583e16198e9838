"""Damped least-squares IK on the wx250s/vx300s PoE models, and the BridgeData delta convention."""
from __future__ import annotations

import modern_robotics as mr
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.embodiments.ik import ArmIK, apply_ee_delta, pose_error, pose_to_xyzrpy


@pytest.fixture(scope="module")
def widowx_ik() -> ArmIK:
    return ArmIK.from_config(load_embodiment("widowx").arms[0])


def round_trip_errors(ik: ArmIK, target: np.ndarray, seed: np.ndarray) -> tuple[float, float, np.ndarray]:
    result = ik.solve(target, seed)
    reached = ik.kinematics.forward(result.joints)
    position = float(np.linalg.norm(reached[:3, 3] - target[:3, 3]))
    rotation = float(np.linalg.norm(mr.so3ToVec(mr.MatrixLog3(target[:3, :3] @ reached[:3, :3].T))))
    return position, rotation, result.joints


@pytest.mark.slow
@pytest.mark.parametrize("embodiment", ["widowx", "aloha"])
def test_ik_round_trip_over_1000_random_reachable_poses(embodiment: str) -> None:
    """Poses are FK of random joint angles inside the limits, so each is reachable.

    The seed is what the controller uses: the joint targets of the previous action, which
    for a BridgeData step (<= 5 cm, <= 0.25 rad) lie within a few tenths of a radian.
    """
    ik = ArmIK.from_config(load_embodiment(embodiment).arms[0])
    rng = np.random.default_rng(2024)
    worst_position = worst_rotation = 0.0
    for _ in range(1000):
        truth = rng.uniform(ik.lower, ik.upper)
        seed = np.clip(truth + rng.uniform(-0.3, 0.3, size=truth.shape), ik.lower, ik.upper)
        position, rotation, joints = round_trip_errors(ik, ik.kinematics.forward(truth), seed)
        assert np.all(joints >= ik.lower) and np.all(joints <= ik.upper)
        worst_position, worst_rotation = max(worst_position, position), max(worst_rotation, rotation)
    assert worst_position < 1e-3, f"worst position error {worst_position * 1000:.3f} mm"
    assert worst_rotation < 0.01, f"worst rotation error {worst_rotation:.5f} rad"


def test_ik_reports_convergence_and_iterations(widowx_ik: ArmIK) -> None:
    truth = np.array([0.3, -0.4, 0.5, 0.2, 0.8, -0.3])
    result = widowx_ik.solve(widowx_ik.kinematics.forward(truth), truth + 0.1)
    assert result.converged and result.iterations < 20
    assert result.position_error_m < widowx_ik.settings.ik_position_tolerance_m
    assert result.rotation_error_rad < widowx_ik.settings.ik_rotation_tolerance_rad


def test_unreachable_target_goes_to_nearest_reachable_pose(widowx_ik: ArmIK) -> None:
    seed = np.array([0.0, -0.5, 0.5, 0.0, 1.0, 0.0])
    start = widowx_ik.kinematics.forward(seed)
    target = start.copy()
    target[:3, 3] = [1.5, 0.3, 0.4]  # far beyond the ~0.65 m reach
    result = widowx_ik.solve(target, seed)
    assert not result.converged
    reached = widowx_ik.kinematics.forward(result.joints)
    assert np.all(np.isfinite(result.joints))
    assert np.all(result.joints >= widowx_ik.lower) and np.all(result.joints <= widowx_ik.upper)
    towards = target[:3, 3] - start[:3, 3]
    moved = reached[:3, 3] - start[:3, 3]
    # It stretched towards the target, ending nearer than it started and near full reach.
    assert np.linalg.norm(reached[:3, 3] - target[:3, 3]) < np.linalg.norm(towards) - 0.1
    assert moved @ towards / (np.linalg.norm(moved) * np.linalg.norm(towards)) > 0.9
    assert result.position_error_m == pytest.approx(np.linalg.norm(reached[:3, 3] - target[:3, 3]), abs=1e-9)
    assert np.linalg.norm(reached[:3, 3]) > 0.55


def test_delta_rotates_about_the_end_effector_in_world_axes() -> None:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [0.3, -0.2, 0.9]).as_matrix()
    pose[:3, 3] = [0.3, 0.1, 0.2]
    rolled = apply_ee_delta(pose, [0, 0, 0, 0.2, 0, 0])
    np.testing.assert_allclose(rolled[:3, 3], pose[:3, 3])  # about the EE position: it does not move
    world_roll = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    np.testing.assert_allclose(rolled[:3, :3], world_roll @ pose[:3, :3], atol=1e-12)  # world axes: pre-multiplied
    assert not np.allclose(rolled[:3, :3], pose[:3, :3] @ world_roll, atol=1e-3)

    moved = apply_ee_delta(pose, [0.01, -0.02, 0.03, 0, 0, 0])
    np.testing.assert_allclose(moved[:3, 3], pose[:3, 3] + [0.01, -0.02, 0.03])  # base-frame translation
    np.testing.assert_allclose(moved[:3, :3], pose[:3, :3])


def test_combined_delta_is_extrinsic_roll_pitch_yaw() -> None:
    delta = [0, 0, 0, 0.1, 0.2, 0.3]
    expected = mr.MatrixExp3(mr.VecToso3([0, 0, 0.3])) @ mr.MatrixExp3(mr.VecToso3([0, 0.2, 0])) @ mr.MatrixExp3(
        mr.VecToso3([0.1, 0, 0])
    )
    np.testing.assert_allclose(apply_ee_delta(np.eye(4), delta)[:3, :3], expected, atol=1e-12)
    np.testing.assert_allclose(pose_to_xyzrpy(apply_ee_delta(np.eye(4), delta))[3:], delta[3:], atol=1e-12)


def test_pose_error_is_zero_at_target_and_world_axis_rotation() -> None:
    pose = apply_ee_delta(np.eye(4), [0.1, 0.2, 0.3, 0.2, -0.1, 0.4])
    np.testing.assert_allclose(pose_error(pose, pose), 0, atol=1e-12)
    turned = apply_ee_delta(pose, [0, 0, 0, 0, 0, 0.05])
    np.testing.assert_allclose(pose_error(turned, pose), [0, 0, 0.05, 0, 0, 0], atol=1e-12)
