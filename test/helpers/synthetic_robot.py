"""A synthetic robot for policy-node tests: camera frames, joint states and committed actions.

Real publishers on real DDS; only the content is synthetic. Each camera tick stamps camera
i with ``now - offsets[i]``, so the observation stamp (the oldest camera's) is known. Every
knob is a plain attribute the test thread changes while the executor publishes.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from helpers.readings import START_POSE
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.embodiments.gripper import normalized_to_finger
from qwen_vla_ros.nodes.common import ns_to_time, seconds_to_duration
from qwen_vla_ros.nodes.ros_contract import image_to_msg

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def camera_frames(config: EmbodimentConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """One fixed random RGB frame per camera, at the config's size."""
    rng = np.random.default_rng(seed)
    return {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in config.cameras}


class SyntheticRobot(Node):
    def __init__(self, config: EmbodimentConfig, context: object, camera_hz: float = 10.0,
                 committed: Callable[[int], np.ndarray] | None = None) -> None:
        super().__init__("synthetic_robot", context=context)
        self.config = config
        self.frames = camera_frames(config)  # camera -> HxWx3 array as published
        self.encodings = {c.name: "rgb8" for c in config.cameras}
        self.enabled = {c.name: True for c in config.cameras}
        self.offsets_ns = {c.name: i * 4_000_000 for i, c in enumerate(config.cameras)}
        self.ticks: list[dict[str, int]] = []  # per camera tick: camera -> stamp published
        self.committed = committed  # t_ns -> action row, published every control period
        self.image_pubs = {c.name: self.create_publisher(Image, c.topic, 2) for c in config.cameras}
        self.joint_pubs = {a.name: self.create_publisher(JointState, a.joint_state_topic, 10) for a in config.arms}
        self.committed_pub = self.create_publisher(JointTrajectory, "/qwen_vla/controller/committed", RELIABLE)
        self.mode_pub = self.create_publisher(String, "/qwen_vla/mode", LATCHED)
        self.instruction_pub = self.create_publisher(String, "/qwen_vla/instruction", RELIABLE)
        self.create_timer(1.0 / camera_hz, self._cameras)
        self.create_timer(config.control.period_s, self._state)

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _cameras(self) -> None:
        now = self.now_ns()
        tick = {}
        for name, publisher in self.image_pubs.items():
            if not self.enabled[name]:
                continue
            stamp = now - self.offsets_ns[name]
            publisher.publish(image_to_msg(self.frames[name], self.encodings[name], stamp, name))
            tick[name] = stamp
        self.ticks.append(tick)

    def _state(self) -> None:
        now = self.now_ns()
        for arm in self.config.arms:
            gripper = arm.gripper
            finger = normalized_to_finger(0.5, gripper)
            msg = JointState(name=[*arm.joint_names, gripper.joint, gripper.finger_joint, "right_finger"],
                             position=[*START_POSE, gripper.joint_open, finger, -finger])
            msg.header.stamp = ns_to_time(now)
            self.joint_pubs[arm.name].publish(msg)
        if self.committed is not None:
            period = self.config.control.period_s
            steps = self.config.control.committed_steps
            msg = JointTrajectory(joint_names=self.config.action.names)
            msg.header.stamp = ns_to_time(now)
            msg.points = [
                JointTrajectoryPoint(positions=self.committed(now + round((k + 1) * period * 1e9)).tolist(),
                                     time_from_start=seconds_to_duration((k + 1) * period))
                for k in range(steps)
            ]
            self.committed_pub.publish(msg)

    def publish_mode(self, mode: str) -> None:
        self.mode_pub.publish(String(data=mode))

    def publish_instruction(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))
