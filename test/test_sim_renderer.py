"""A missing or broken renderer is found at start-up and named with the package to install.

The broken renderer is real: EGL with no vendor library (``__EGL_VENDOR_LIBRARY_DIRS`` pointed
at an empty folder, so libglvnd finds no driver), as on a machine without Mesa's EGL.
"""
from __future__ import annotations

import os
import time

import pytest

from qwen_vla_ros.sim.renderer_check import renderer_problem

pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")


@pytest.fixture
def broken_egl(tmp_path) -> dict[str, str]:
    env = {**os.environ, "MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_DIRS": str(tmp_path)}
    if renderer_problem(env) is None:
        pytest.skip("this EGL does not go through libglvnd's vendor folders, so it cannot be broken this way")
    return env


def test_working_renderer_has_no_problem() -> None:
    problem = renderer_problem({**os.environ, "MUJOCO_GL": "egl"})
    if problem and "libEGL" in problem:
        pytest.skip(f"no EGL on this machine: {problem}")
    assert problem is None


def test_broken_egl_names_the_package_and_the_way_without_cameras(broken_egl) -> None:
    problem = renderer_problem(broken_egl)
    assert "apt-get install libegl1 libgl1-mesa-dri" in problem and "camera_rate_hz:=0" in problem
    assert "--no-sim-cameras" in problem and "\n" not in problem


@pytest.mark.ros
def test_sim_node_exits_2_with_one_clear_message_and_runs_without_cameras(ros_domain, broken_egl) -> None:
    env = {**ros_domain.env, "MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_DIRS": broken_egl["__EGL_VENDOR_LIBRARY_DIRS"]}
    args = ("-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p",
            "config_overrides:=['outputs=[{adapter: forward_command, arms: [left, right]}]']")
    child = ros_domain.start_process(*args, env=env)
    output = child.communicate(timeout=120)[0]
    assert child.returncode == 2, output
    assert "apt-get install libegl1" in output and "Traceback" not in output and "glGetError" not in output
    child = ros_domain.start_process(*args, "-p", "camera_rate_hz:=0", env=env)
    time.sleep(10)  # started and simulating: its start-up line is logged within a few seconds
    output = ros_domain.stop_process(child)
    assert "cameras off" in output and "Traceback" not in output, output
