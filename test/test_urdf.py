"""URDFs agree with the configs and with the public product-of-exponentials models.

The URDFs are expanded with the real xacro and loaded with yourdfpy; forward kinematics from
the URDF tree is compared with modern_robotics' PoE from the config, at home and at random
joint angles, so a wrong link offset or axis fails here.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from qwen_vla_ros.config import EMBODIMENTS, load_embodiment
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.paths import urdf_dir

xacro = pytest.importorskip("xacro", reason="xacro is not installed (pip install xacro)")
yourdfpy = pytest.importorskip("yourdfpy", reason="yourdfpy is not installed (pip install yourdfpy)")

# Home poses as published in ../shared/reference/robots.md (not computed by our code).
REFERENCE_HOME = {
    "vx300s": np.array([[1, 0, 0, 0.536494], [0, 1, 0, 0], [0, 0, 1, 0.42705], [0, 0, 0, 1]]),
    "wx250s": np.array([[1, 0, 0, 0.458325], [0, 1, 0, 0], [0, 0, 1, 0.36065], [0, 0, 0, 1]]),
}


def load_urdf(filename: str):
    document = xacro.process_file(str(urdf_dir() / filename))
    return yourdfpy.URDF.load(io.StringIO(document.toxml()), load_meshes=False, load_collision_meshes=False)


@pytest.fixture(scope="module", params=EMBODIMENTS)
def embodiment(request: pytest.FixtureRequest):
    config = load_embodiment(request.param)
    return config, load_urdf(config.robot.urdf)


def test_config_joint_limits_lie_inside_urdf_limits(embodiment) -> None:
    config, urdf = embodiment
    checked = 0
    for arm in config.arms:
        limited = [(j.name, j.limits) for j in arm.joints]
        if arm.gripper is not None:
            limited.append((arm.gripper.joint, arm.gripper.limits))
        for name, limits in limited:
            joint = urdf.joint_map.get(arm.urdf_prefix + name)
            assert joint is not None, f"URDF {config.robot.urdf} lacks joint {arm.urdf_prefix + name}"
            if joint.type == "continuous":
                continue
            assert joint.limit.lower <= limits.lower + 1e-9, f"{name}: {limits.lower} < URDF {joint.limit.lower}"
            assert limits.upper <= joint.limit.upper + 1e-9, f"{name}: {limits.upper} > URDF {joint.limit.upper}"
            assert limits.velocity is None or limits.velocity <= joint.limit.velocity + 1e-9
            checked += 1
    if config.arms:
        assert checked >= 6 * len(config.arms)


def test_finger_travel_of_the_config_lies_inside_the_urdf_finger_joints(embodiment) -> None:
    """The joint_states fingers (open and closed positions) must be poses the URDF can show."""
    config, urdf = embodiment
    for arm in config.arms:
        gripper = arm.gripper
        if gripper is None:
            continue
        joint = urdf.joint_map[arm.urdf_prefix + gripper.finger_joint]
        for position in (gripper.finger_open, gripper.finger_close):
            assert joint.limit.lower - 1e-9 <= position <= joint.limit.upper + 1e-9, (
                f"{arm.name} {gripper.finger_joint} at {position} m is outside the URDF's "
                f"[{joint.limit.lower}, {joint.limit.upper}]"
            )


def test_base_speed_limits_fit_the_urdf_wheels(embodiment) -> None:
    """A differential base at full speed and full turn spins its outer wheel at (v + w * track / 2) / r."""
    config, urdf = embodiment
    if config.base is None:
        pytest.skip(f"{config.name} has no base")
    wheels = [urdf.joint_map[name] for name in ("left_wheel_joint", "right_wheel_joint")]
    track = abs(wheels[0].origin[1, 3] - wheels[1].origin[1, 3])
    radius = urdf.link_map["left_wheel_link"].visuals[0].geometry.cylinder.radius
    outer_wheel = (config.base.max_linear + config.base.max_angular * track / 2) / radius
    for wheel in wheels:
        assert outer_wheel <= wheel.limit.velocity, f"{outer_wheel:.1f} rad/s > URDF {wheel.limit.velocity}"


def test_urdf_forward_kinematics_matches_product_of_exponentials(embodiment) -> None:
    config, urdf = embodiment
    rng = np.random.default_rng(7)
    for arm in config.arms:
        kinematics = ArmKinematics.from_config(arm)
        names = [arm.urdf_prefix + j.name for j in arm.joints]
        lows = np.array([j.limits.lower for j in arm.joints])
        highs = np.array([j.limits.upper for j in arm.joints])
        for sample in range(100):
            q = np.zeros(len(names)) if sample == 0 else rng.uniform(lows, highs)
            configuration = dict(zip(urdf.actuated_joint_names, np.zeros(len(urdf.actuated_joint_names))))
            configuration.update(zip(names, q))
            urdf.update_cfg(configuration)
            from_urdf = urdf.get_transform(arm.urdf_prefix + "ee_gripper_link", arm.urdf_prefix + "base_link")
            np.testing.assert_allclose(from_urdf, kinematics.forward(q), atol=1e-9, err_msg=f"{arm.name} q={q}")


@pytest.mark.parametrize("embodiment_name, model", [("aloha", "vx300s"), ("widowx", "wx250s")])
def test_config_kinematics_is_the_published_home_pose(embodiment_name: str, model: str) -> None:
    for arm in load_embodiment(embodiment_name).arms:
        np.testing.assert_allclose(ArmKinematics.from_config(arm).forward(np.zeros(6)), REFERENCE_HOME[model])


def test_aloha_arms_face_each_other_across_the_table() -> None:
    urdf = load_urdf("aloha.urdf.xacro")
    left = urdf.get_transform("left/base_link", "world")
    right = urdf.get_transform("right/base_link", "world")
    np.testing.assert_allclose(left[:3, 3], [-0.469, 0.5, 0.0])
    np.testing.assert_allclose(right[:3, 3], [0.469, 0.5, 0.0])
    np.testing.assert_allclose(left[:3, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(right[:3, 0], [-1, 0, 0], atol=1e-4)


def test_driver_joint_names_exist_in_urdf(embodiment) -> None:
    """joint_states from interbotix_xs_sdk list the arm joints, then gripper and both fingers."""
    config, urdf = embodiment
    for arm in config.arms:
        expected = arm.joint_names + ["gripper", "left_finger", "right_finger"]
        missing = [n for n in expected if arm.urdf_prefix + n not in urdf.joint_map]
        assert not missing
    if config.base is not None:
        assert {"left_wheel_joint", "right_wheel_joint"} <= set(urdf.joint_map)
