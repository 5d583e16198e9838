"""A stand-in for the Interbotix ``xs_sdk`` driver of one arm, over real DDS and the real
``interbotix_xs_msgs`` types: the real driver needs the motors (a Dynamixel bus), which cannot
exist here.

It serves ``get_robot_info``, ``set_operating_modes``, ``set_motor_registers`` and
``torque_enable`` under the arm's namespace as the driver does (the gripper answered in
terms of its left finger joint), keeps the modes it is set to, records every call in order,
follows the commands it is sent and publishes joint states in the driver's layout (6 joints,
gripper, left_finger, right_finger). Its facts are the public vx300s ones
(shared/reference/robots.md), not the product's config.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
VX300S_JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
VX300S_LOWER = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158]
VX300S_UPPER = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158]
VX300S_SLEEP = [0.0, -1.8, 1.55, 0.0, 0.8, 0.0]  # the stand-in's own choice (robots.md gives the wx250s one)
START = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0]  # robots.md START_ARM_POSE
FINGER_RANGE = (0.021, 0.057)


@dataclass
class DriverFacts:
    """What the stand-in answers; a test changes one field to make one kind of mismatch."""

    arm_mode: str = "position"
    gripper_mode: str = "current_based_position"
    joint_names: list[str] = field(default_factory=lambda: list(VX300S_JOINTS))
    lower: list[float] = field(default_factory=lambda: list(VX300S_LOWER))
    upper: list[float] = field(default_factory=lambda: list(VX300S_UPPER))
    velocity: list[float] = field(default_factory=lambda: [math.pi] * 6)
    serve: bool = True  # False: the driver is not there (no service ever answers)
    initial: list[float] = field(default_factory=lambda: list(START))  # where the arm stands at start


class XsSdkArm:
    def __init__(self, node: Node, namespace: str, facts: DriverFacts | None = None, services_only: bool = False):
        """``services_only``: for a test that follows the commands and publishes joint states itself."""
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
        from interbotix_xs_msgs.srv import OperatingModes, RegisterValues, RobotInfo, TorqueEnable

        self.node, self.namespace = node, namespace
        self.facts = facts or DriverFacts()
        self.calls: list[tuple[float, str, dict]] = []  # (time.monotonic(), service or topic, fields)
        self.registers: dict[tuple[str, str], int] = {}
        self.joints, self.gripper_angle = list(self.facts.initial), 1.0
        if self.facts.serve:
            for name, srv_type, handler in (("get_robot_info", RobotInfo, self._robot_info),
                                            ("set_operating_modes", OperatingModes, self._operating_modes),
                                            ("set_motor_registers", RegisterValues, self._set_register),
                                            ("torque_enable", TorqueEnable, self._torque)):
                node.create_service(srv_type, f"/{namespace}/{name}", handler)
        if services_only:
            return
        node.create_subscription(JointGroupCommand, f"/{namespace}/commands/joint_group", self._on_group, RELIABLE)
        node.create_subscription(JointSingleCommand, f"/{namespace}/commands/joint_single", self._on_single, RELIABLE)
        self.states = node.create_publisher(JointState, f"/{namespace}/joint_states", 10)
        node.create_timer(0.02, self._publish_state)

    def _record(self, what: str, **fields: object) -> None:
        self.calls.append((time.monotonic(), what, fields))

    def called(self, what: str) -> list[dict]:
        return [fields for _, name, fields in self.calls if name == what]

    def first(self, what: str) -> float | None:
        return next((t for t, name, _ in self.calls if name == what), None)

    def _robot_info(self, request, response):
        self._record("get_robot_info", cmd_type=request.cmd_type, name=request.name)
        facts = self.facts
        if request.cmd_type == "group":
            response.mode, response.joint_names = facts.arm_mode, list(facts.joint_names)
            response.joint_lower_limits, response.joint_upper_limits = list(facts.lower), list(facts.upper)
            response.joint_velocity_limits, response.joint_sleep_positions = list(facts.velocity), list(VX300S_SLEEP)
            response.joint_state_indices = [VX300S_JOINTS.index(j) if j in VX300S_JOINTS else 0 for j in facts.joint_names]
        else:  # the gripper: in terms of its left finger
            response.mode, response.joint_names = facts.gripper_mode, [request.name]
            response.joint_lower_limits, response.joint_upper_limits = [FINGER_RANGE[0]], [FINGER_RANGE[1]]
            response.joint_velocity_limits, response.joint_sleep_positions = [1.0], [0.0]
            response.joint_state_indices = [7]
        response.profile_type, response.num_joints = "velocity", len(response.joint_names)
        response.name = [request.name]
        return response

    def _operating_modes(self, request, response):
        self._record("set_operating_modes", cmd_type=request.cmd_type, name=request.name, mode=request.mode,
                     profile_type=request.profile_type, profile_velocity=request.profile_velocity,
                     profile_acceleration=request.profile_acceleration)
        if request.cmd_type == "group":
            self.facts.arm_mode = request.mode
        else:
            self.facts.gripper_mode = request.mode
        return response

    def _set_register(self, request, response):
        self._record("set_motor_registers", cmd_type=request.cmd_type, name=request.name, reg=request.reg,
                     value=request.value)
        self.registers[(request.name, request.reg)] = request.value
        return response

    def _torque(self, request, response):
        self._record("torque_enable", cmd_type=request.cmd_type, name=request.name, enable=request.enable)
        return response

    def _on_group(self, message) -> None:
        self._record("joint_group", cmd=list(message.cmd))
        self.joints = list(message.cmd)

    def _on_single(self, message) -> None:
        self._record("joint_single", cmd=message.cmd)
        self.gripper_angle = message.cmd

    def _publish_state(self) -> None:
        opening = (self.gripper_angle - 0.6197) / (1.6214 - 0.6197)  # robots.md follower gripper constants
        finger = 0.0440 + opening * (0.0579 - 0.0440)
        message = JointState(name=[*VX300S_JOINTS, "gripper", "left_finger", "right_finger"],
                             position=[*self.joints, self.gripper_angle, finger, -finger])
        message.header.stamp = self.node.get_clock().now().to_msg()
        self.states.publish(message)
