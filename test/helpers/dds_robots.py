"""Stand-ins for robot drivers in DDS tests (the motors cannot exist here)."""
from __future__ import annotations

import math
import time

from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Header

from qwen_vla_ros.contract import POLICY_HEARTBEAT

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


class TwistBase:
    """A base that drives at the last Twist it received and publishes the integrated odometry at 50 Hz."""

    PERIOD_S = 0.02

    def __init__(self, node: Node, cmd_vel_topic: str, odom_topic: str):
        self.node = node
        self.x = self.y = self.yaw = self.v = self.w = 0.0
        self.twists: list[tuple[float, Twist]] = []  # (receive time.monotonic(), message)
        node.create_subscription(Twist, cmd_vel_topic, self._on_twist, RELIABLE)
        self.odometry = node.create_publisher(Odometry, odom_topic, 10)
        node.create_timer(self.PERIOD_S, self._integrate)

    def _on_twist(self, message: Twist) -> None:
        self.twists.append((time.monotonic(), message))
        self.v, self.w = message.linear.x, message.angular.z

    def _integrate(self) -> None:
        self.x += self.v * math.cos(self.yaw) * self.PERIOD_S
        self.y += self.v * math.sin(self.yaw) * self.PERIOD_S
        self.yaw += self.w * self.PERIOD_S
        message = Odometry()
        message.header.stamp = self.node.get_clock().now().to_msg()
        message.pose.pose.position.x, message.pose.pose.position.y = self.x, self.y
        message.pose.pose.orientation.z, message.pose.pose.orientation.w = math.sin(self.yaw / 2), math.cos(self.yaw / 2)
        message.twist.twist.linear.x, message.twist.twist.angular.z = self.v, self.w
        self.odometry.publish(message)


class ForwardCommandArms:
    """Arms on the forward_command adapter: joint states (Interbotix layout) are the last command, at 50 Hz."""

    def __init__(self, node: Node, arms: list, start: list[float]):
        self.node = node
        self.arms = arms
        self.joints = {arm.name: list(start) for arm in arms}
        self.motor = {arm.name: arm.gripper.joint_open for arm in arms}  # gripper motor angle (rad)
        self.commands = 0
        self.states = {arm.name: node.create_publisher(JointState, arm.joint_state_topic, 10) for arm in arms}
        for arm in arms:
            node.create_subscription(Float64MultiArray, f"/{arm.namespace}/forward_position_controller/commands",
                                     lambda m, name=arm.name: self._on_command(name, m), RELIABLE)
        node.create_timer(0.02, self._publish)

    def _on_command(self, arm: str, message: Float64MultiArray) -> None:
        self.joints[arm], self.motor[arm] = list(message.data[:6]), message.data[6]
        self.commands += 1

    def _publish(self) -> None:
        for arm in self.arms:
            gripper = arm.gripper
            opening = (self.motor[arm.name] - gripper.joint_close) / (gripper.joint_open - gripper.joint_close)
            finger = gripper.finger_close + opening * (gripper.finger_open - gripper.finger_close)
            message = JointState(name=[*arm.joint_names, gripper.joint, gripper.finger_joint],
                                 position=[*self.joints[arm.name], self.motor[arm.name], finger])
            message.header.stamp = self.node.get_clock().now().to_msg()
            self.states[arm.name].publish(message)


class PolicyPulse:
    """The policy's liveness heartbeat (as policy_node's heartbeat thread sends it) for tests that play the policy:
    without it the controller's watchdog treats the policy as lost and its chunks are refused."""

    def __init__(self, node: Node, period_s: float = 0.05):
        self.node = node
        self.on = True
        self.publisher = node.create_publisher(Header, POLICY_HEARTBEAT.name,
                                               QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
        node.create_timer(period_s, self._beat)

    def _beat(self) -> None:
        if self.on:
            self.publisher.publish(Header(stamp=self.node.get_clock().now().to_msg(), frame_id="test/policy"))
