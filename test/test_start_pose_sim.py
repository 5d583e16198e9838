"""The start pose in simulation: the same controller service, against sim_node instead of a driver.

sim_node (the WidowX kinematic mock hardware) and the WidowX controller run as processes over
real DDS, both commanding and reading through the forward_command adapter; the pose is an
override of this test, judged against the sim's own joint states.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
POSE = [0.0, -0.2, 0.3, 0.0, 0.5, 0.0]  # the sim starts at sim.initial_joints [0, -0.5, 0.5, 0, 1.0, 0]
TOLERANCE = 0.02
OVERRIDES = ("config_overrides:=['outputs=[{adapter: forward_command, arms: [arm]}]', "
             f"'start_pose={{joints: {{arm: {POSE}}}, tolerance_rad: {TOLERANCE}, timeout_s: 20.0}}']")


def test_move_to_start_reaches_the_pose_in_simulation(ros_domain) -> None:
    sim = ros_domain.start_process("-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p", "config:=widowx",
                                   "-p", "camera_rate_hz:=0.0", "-p", OVERRIDES)
    controller = ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=widowx",
                                          "-p", OVERRIDES)
    node = rclpy.create_node("start_pose_probe", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    states: list[JointState] = []
    outcomes: list[String] = []
    node.create_subscription(JointState, "/wx250s/joint_states", states.append, 10)
    node.create_subscription(String, "/qwen_vla/controller/start_pose", outcomes.append,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    commands: list[JointState] = []
    node.create_subscription(JointState, "/qwen_vla/controller/command", commands.append,
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    client = node.create_client(Trigger, "/qwen_vla/controller/move_to_start")
    try:
        # Asked once the controller commands (it has joint states and its executor spins) and the
        # sim's joint states reach this probe too: discovery of one pair of processes can lag the
        # others by seconds (the sim's first state came here after the move had ended, 1 run in 10).
        assert ros_domain.spin_until(executor, lambda: bool(commands) and bool(states) and client.service_is_ready(),
                                     timeout=90.0)
        future = client.call_async(Trigger.Request())
        assert ros_domain.spin_until(executor, future.done, timeout=30.0)
        assert future.result().success, future.result().message
        assert ros_domain.spin_until(executor, lambda: bool(outcomes), timeout=30.0)
        heard_by_the_outcome = len(states)
        # The pose is judged on a state the sim measured after the controller said it had arrived.
        assert ros_domain.spin_until(executor, lambda: len(states) > heard_by_the_outcome, timeout=5.0)
    finally:
        outputs = [ros_domain.stop_process(child) for child in (controller, sim)]
        node.destroy_node()
    outcome = json.loads(outcomes[-1].data)
    assert outcome["arrived"], (outcome, outputs[0])
    measured = dict(zip(states[-1].name, states[-1].position, strict=True))
    joints = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
    np.testing.assert_allclose([measured[j] for j in joints], POSE, atol=TOLERANCE)
