"""Output adapters publish exactly the documented messages (docs/architecture.md, "Command adapters").

Interbotix types are the real interbotix_xs_msgs built from the bundled definitions; their
wire layout is cross-checked against rosbags' independent CDR serializer.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.config.hardware import (  # noqa: E402
    ForwardCommandOutput,
    InterbotixOutput,
    JointTrajectoryOutput,
    TwistOutput,
)
from qwen_vla_ros.control.layout import CommandLayout  # noqa: E402
from qwen_vla_ros.interfaces.build import INTERFACES_DIR  # noqa: E402
from qwen_vla_ros.nodes.adapters import make_adapters  # noqa: E402

pytestmark = pytest.mark.ros


def collect(ros_domain, subscriptions: dict[str, type], send, expected: int) -> dict[str, list]:
    node = rclpy.create_node("adapter_probe", context=ros_domain.context)
    received: dict[str, list] = {topic: [] for topic in subscriptions}
    for topic, message_type in subscriptions.items():
        node.create_subscription(message_type, topic, received[topic].append, 10)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    try:
        adapters = send(node)
        ros_domain.spin_until(executor, lambda: False, timeout=0.5)  # discovery
        for _ in range(3):
            for adapter in adapters:
                adapter.send(VALUES)
            ros_domain.spin_until(executor, lambda: all(len(v) >= expected for v in received.values()), timeout=3.0)
    finally:
        node.destroy_node()
    return received


ALOHA = load_embodiment("aloha_mobile")
LAYOUT = CommandLayout(ALOHA)
VALUES = np.array([0.1, -0.9, 1.1, 0.2, -0.3, 0.4, 0.25, -0.1, -1.0, 1.2, -0.2, 0.3, -0.4, 0.75, 0.3, -0.2])


def arm_expectation(arm_index: int) -> tuple[list[float], float]:
    arm = LAYOUT.arms[arm_index]
    gripper = arm.gripper
    opening = VALUES[arm.gripper_index]
    return list(VALUES[arm.joint_index]), gripper.joint_close + opening * (gripper.joint_open - gripper.joint_close)


def test_joint_trajectory_forward_command_and_twist_layouts(ros_domain) -> None:
    outputs = [
        JointTrajectoryOutput(adapter="joint_trajectory", arms=["left"]),
        ForwardCommandOutput(adapter="forward_command", arms=["right"]),
        TwistOutput(adapter="twist", topic="/cmd_vel"),
    ]
    trajectory_topic = "/follower_left/arm_controller/joint_trajectory"
    forward_topic = "/follower_right/forward_position_controller/commands"
    received = collect(
        ros_domain,
        {trajectory_topic: JointTrajectory, forward_topic: Float64MultiArray, "/cmd_vel": Twist},
        lambda node: make_adapters(node, LAYOUT, outputs, period_s=0.02),
        expected=1,
    )
    left_joints, left_gripper = arm_expectation(0)
    trajectory = received[trajectory_topic][0]
    assert list(trajectory.joint_names) == ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
    assert len(trajectory.points) == 1
    np.testing.assert_allclose(trajectory.points[0].positions, left_joints + [left_gripper])
    assert trajectory.points[0].time_from_start.sec == 0 and trajectory.points[0].time_from_start.nanosec == 20_000_000
    right_joints, right_gripper = arm_expectation(1)
    np.testing.assert_allclose(received[forward_topic][0].data, right_joints + [right_gripper])
    twist = received["/cmd_vel"][0]
    assert (twist.linear.x, twist.angular.z) == (pytest.approx(0.3), pytest.approx(-0.2))
    assert (twist.linear.y, twist.linear.z, twist.angular.x, twist.angular.y) == (0, 0, 0, 0)


def test_interbotix_adapter_sends_group_and_single_commands(ros_domain, interbotix_msgs) -> None:
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

    outputs = [InterbotixOutput(adapter="interbotix", arms=["left", "right"])]
    topics = {
        "/follower_left/commands/joint_group": JointGroupCommand,
        "/follower_left/commands/joint_single": JointSingleCommand,
        "/follower_right/commands/joint_group": JointGroupCommand,
        "/follower_right/commands/joint_single": JointSingleCommand,
    }
    received = collect(ros_domain, topics, lambda node: make_adapters(node, LAYOUT, outputs, period_s=0.02), expected=1)
    for side, index in (("left", 0), ("right", 1)):
        joints, gripper = arm_expectation(index)
        group = received[f"/follower_{side}/commands/joint_group"][0]
        single = received[f"/follower_{side}/commands/joint_single"][0]
        assert group.name == "arm" and single.name == "gripper"
        np.testing.assert_allclose(group.cmd, joints, rtol=1e-6)  # float32 on the wire
        assert single.cmd == pytest.approx(gripper, rel=1e-6)


def test_interbotix_wire_layout_matches_an_independent_serializer(interbotix_msgs) -> None:
    """rclpy's CDR bytes of the built types equal rosbags' bytes for the same .msg text."""
    rosbags = pytest.importorskip("rosbags.typesys", reason="rosbags is not installed (pip install '.[recording]')")
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
    from rclpy.serialization import serialize_message

    typestore = rosbags.get_typestore(rosbags.Stores.ROS2_HUMBLE)
    definitions = {}
    for name in ("JointGroupCommand", "JointSingleCommand"):
        text = (INTERFACES_DIR / "interbotix_xs_msgs" / "msg" / f"{name}.msg").read_text()
        definitions.update(rosbags.get_types_from_msg(text, f"interbotix_xs_msgs/msg/{name}"))
    typestore.register(definitions)
    group_type = typestore.types["interbotix_xs_msgs/msg/JointGroupCommand"]
    single_type = typestore.types["interbotix_xs_msgs/msg/JointSingleCommand"]
    cmd = np.array([0.5, -1.25, 2.0, 0.0, 1.5, -0.75], dtype=np.float32)
    assert bytes(serialize_message(JointGroupCommand(name="arm", cmd=cmd.tolist()))) == bytes(
        typestore.serialize_cdr(group_type(name="arm", cmd=cmd), group_type.__msgtype__)
    )
    assert bytes(serialize_message(JointSingleCommand(name="gripper", cmd=1.25))) == bytes(
        typestore.serialize_cdr(single_type(name="gripper", cmd=1.25), single_type.__msgtype__)
    )
    assert JointGroupCommand.get_fields_and_field_types() == {"name": "string", "cmd": "sequence<float>"}
    assert JointSingleCommand.get_fields_and_field_types() == {"name": "string", "cmd": "float"}
