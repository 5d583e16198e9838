"""The rclpy-origin guard: PyPI ROS wheels must never silently shadow a sourced distribution."""
from __future__ import annotations

from qwen_vla_ros.ros_env import DDS_PROFILE_ENV, dds_profile_path, rclpy_origin_problem, with_dds_profile


def test_no_distribution_sourced_means_no_problem() -> None:
    assert rclpy_origin_problem("/venv/lib/python3.11/site-packages/rclpy/__init__.py", env={}) is None


def test_rclpy_from_the_sourced_distribution_is_fine() -> None:
    env = {"ROS_DISTRO": "jazzy", "AMENT_PREFIX_PATH": "/opt/ros/jazzy"}
    assert rclpy_origin_problem("/opt/ros/jazzy/lib/python3.12/site-packages/rclpy/__init__.py", env) is None


def test_wheel_rclpy_under_a_sourced_distribution_is_reported() -> None:
    env = {"ROS_DISTRO": "humble", "AMENT_PREFIX_PATH": "/home/me/ws/install/pkg:/opt/ros/humble"}
    problem = rclpy_origin_problem("/home/me/venv/lib/python3.10/site-packages/rclpy/__init__.py", env)
    assert problem is not None and "humble" in problem and "ros-wheels" in problem


def test_user_profile_wins_over_shipped_profile() -> None:
    assert with_dds_profile({})[DDS_PROFILE_ENV] == str(dds_profile_path())
    assert with_dds_profile({DDS_PROFILE_ENV: "/etc/mine.xml"})[DDS_PROFILE_ENV] == "/etc/mine.xml"
    assert dds_profile_path().is_file()
