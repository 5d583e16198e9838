"""Stand-ins for robot drivers in DDS tests (the motors cannot exist here)."""
from __future__ import annotations

import math
import time

from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

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
