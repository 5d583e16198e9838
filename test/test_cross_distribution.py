"""A policy host on the default ROS wheels and a Jazzy robot computer on one DDS domain.

This test runs in the Jazzy leg (``bash scripts/bootstrap.sh test-jazzy``): this process and the
controller it starts use Jazzy's rclpy 7.1.6, and ``policy_node`` runs under
``QWEN_VLA_PEER_PYTHON``, the default venv's interpreter (Kilted-era rclpy 9). The arm drivers
are stand-ins (the Interbotix motors cannot exist here): they publish joint states the way
xs_sdk does and follow the commands they are sent, over the real interbotix_xs_msgs types.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from helpers.xs_sdk import XsSdkArm  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros import contract  # noqa: E402
from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.embodiments.gripper import joint_to_normalized  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import image_to_msg  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ALOHA_START = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0]
CAMERA_SIZE = {"width": 80, "height": 60}
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def peer_python() -> str:
    python = os.environ.get("QWEN_VLA_PEER_PYTHON", "")
    if not python or not Path(python).is_file():
        pytest.skip("QWEN_VLA_PEER_PYTHON names no interpreter of another ROS distribution's venv "
                    "(bash scripts/bootstrap.sh test-jazzy sets it to the default venv's python)")
    return python


def rclpy_version(python: str) -> str:
    return subprocess.run([python, "-c", "from importlib.metadata import version; print(version('ros-rclpy'))"],
                          capture_output=True, text=True, check=True, timeout=60, env={}).stdout.strip()


def test_chunks_commands_committed_and_heartbeats_cross_between_distributions(
    ros_domain, interbotix_msgs, tiny_checkpoint, tmp_path: Path,
) -> None:
    import rclpy
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

    peer = peer_python()
    here, there = rclpy_version(sys.executable), rclpy_version(peer)
    assert here.split(".")[0] != there.split(".")[0], f"both sides run rclpy {here}: not a cross-distribution test"

    overrides = [f"cameras.{i}.{key}={value}" for i in range(4) for key, value in CAMERA_SIZE.items()]
    config = load_embodiment("aloha", {o.split("=")[0]: int(o.split("=")[1]) for o in overrides})
    params = tmp_path / "policy.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "checkpoint": str(tiny_checkpoint), "config_overrides": overrides,
        "runtime_overrides": ["schedule.trigger=rate", "schedule.replan_hz=2"],
    }}}))
    # The ROS wheels' start-up hook points LD_LIBRARY_PATH at its own venv's libraries and marks itself
    # done for child processes: the peer venv must run its own hook, not inherit this one's.
    peer_env = {k: v for k, v in ros_domain.env.items() if k not in ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")}
    policy = subprocess.Popen([peer, "-m", "qwen_vla_ros.nodes.policy_node", "--ros-args", "--params-file", str(params)],
                              env=peer_env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    controller = ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha")

    node = rclpy.create_node("jazzy_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    joints = {arm.name: list(ALOHA_START) for arm in config.arms}
    gripper_angle = {arm.name: arm.gripper.joint_open for arm in config.arms}
    groups: list[str] = []
    state_pubs = {arm.name: node.create_publisher(JointState, arm.joint_state_topic, 10) for arm in config.arms}
    for arm in config.arms:
        def on_group(message: JointGroupCommand, name: str = arm.name) -> None:
            groups.append(name)
            joints[name] = list(message.cmd)

        def on_single(message: JointSingleCommand, name: str = arm.name) -> None:
            gripper_angle[name] = message.cmd

        node.create_subscription(JointGroupCommand, f"/{arm.namespace}/commands/joint_group", on_group, RELIABLE)
        node.create_subscription(JointSingleCommand, f"/{arm.namespace}/commands/joint_single", on_single, RELIABLE)
        XsSdkArm(node, arm.namespace, services_only=True)  # the driver's services, for the controller's preflight

    def publish_states() -> None:
        for arm in config.arms:
            finger = arm.gripper.finger_close + joint_to_normalized(gripper_angle[arm.name], arm.gripper) * (
                arm.gripper.finger_open - arm.gripper.finger_close)
            message = JointState(name=[*arm.joint_names, "gripper", "left_finger", "right_finger"],
                                 position=[*joints[arm.name], gripper_angle[arm.name], finger, -finger])
            message.header.stamp = node.get_clock().now().to_msg()
            state_pubs[arm.name].publish(message)

    frames = {camera.name: np.full((camera.height, camera.width, 3), 40 * index, np.uint8)
              for index, camera in enumerate(config.cameras)}
    image_pubs = {camera.name: node.create_publisher(Image, camera.topic, 2) for camera in config.cameras}

    def publish_images() -> None:
        now = node.get_clock().now().nanoseconds
        for camera in config.cameras:
            image_pubs[camera.name].publish(image_to_msg(frames[camera.name], "rgb8", now, camera.name))

    node.create_timer(0.02, publish_states)
    node.create_timer(0.1, publish_images)
    chunks: list[JointTrajectory] = []
    controller_state: list[dict[str, str]] = []
    policy_state: list[dict[str, str]] = []
    node.create_subscription(JointTrajectory, contract.ACTION_CHUNK.name, chunks.append, RELIABLE)
    node.create_subscription(DiagnosticArray, contract.CONTROLLER_STATE.name, lambda m: controller_state.extend(
        {v.key: v.value for v in s.values} for s in m.status), 10)
    node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS.name, lambda m: policy_state.extend(
        {v.key: v.value for v in s.values} for s in m.status if s.name.startswith("policy_node")), 10)

    def latest(states: list[dict[str, str]], key: str) -> float:
        return float(states[-1].get(key, 0)) if states else 0.0

    try:
        ros_domain.spin_until(executor, lambda: latest(policy_state, "rtc_chunks") >= 1
                              and latest(controller_state, "chunks_accepted") >= 2, timeout=180)
        assert chunks, "no action chunk from the peer's policy_node reached this distribution"
        assert latest(controller_state, "chunks_accepted") >= 2, (
            f"the Jazzy controller accepted no chunks: {controller_state[-1] if controller_state else 'no state'}")
        assert groups, "the controller executed no chunk: no joint_group command reached the stand-in driver"
        assert latest(policy_state, "rtc_chunks") >= 1, (
            f"no committed actions reached the peer's policy: {policy_state[-1] if policy_state else 'no diagnostics'}")
        # The heartbeat clock check: the controller has a figure for the policy's heartbeats (a peer on this
        # host shares the clock, so its figure is the heartbeat delay; on another host, the clock offset).
        prefixes = ("clock_offset_ms.", "heartbeat_delay_ms.")

        def policy_figures() -> list[float]:
            state = controller_state[-1] if controller_state else {}
            return [float(v) for k, v in state.items() if k.startswith(prefixes) and k.endswith("policy_node")]

        ros_domain.spin_until(executor, lambda: bool(policy_figures()), 30)
        figures = policy_figures()
        assert figures and all(np.isfinite(figures)), (
            f"no heartbeat figure from the peer's policy: {controller_state[-1] if controller_state else 'no state'}")
    finally:
        node.destroy_node()
        outputs = {name: ros_domain.stop_process(child) for name, child in (("policy", policy), ("controller", controller))}
        for name, output in outputs.items():
            print(f"---- {name} ----\n{output[-4000:]}")  # shown when the test fails
    for output in outputs.values():
        assert "Traceback" not in output, output[-3000:]
