"""Output adapters: the controller's command vector as the messages a driver or ros2_control expects.

One adapter per entry of the embodiment's ``outputs:`` (docs/architecture.md, "Command
adapters"). Topic templates take ``{namespace}`` = the arm's driver namespace.
:class:`CommandOutputs` is everything one control period sends: the adapters, the command
topic and the committed actions.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from geometry_msgs.msg import Twist
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.config.hardware import (
    ForwardCommandOutput,
    InterbotixOutput,
    JointTrajectoryOutput,
    OutputAdapter,
    TwistOutput,
)
from qwen_vla_ros.contract import COMMAND, COMMITTED, DRIVER_COMMAND_QOS
from qwen_vla_ros.control import ControlOutput
from qwen_vla_ros.control.layout import ArmLayout, CommandLayout
from qwen_vla_ros.nodes.common import ns_to_time, seconds_to_duration
from qwen_vla_ros.nodes.ros_contract import PUBLISHER_QOS, committed_to_trajectory, create_publisher

COMMAND_QOS = PUBLISHER_QOS[DRIVER_COMMAND_QOS]

INTERBOTIX_MISSING = (
    "output adapter 'interbotix' needs the interbotix_xs_msgs Python package, which is not importable ({error}). "
    "On the robot computer, build interbotix_xs_msgs from github.com/Interbotix/interbotix_ros_core in your "
    "workspace and source it; on a machine without it, run `qwen-vla-ros build-interfaces` and apply the exports "
    "it prints; or choose the joint_trajectory or forward_command adapter in the embodiment's outputs."
)


class Adapter(Protocol):
    def send(self, values: np.ndarray) -> None: ...


def import_interbotix_messages() -> Any:
    """The interbotix_xs_msgs.msg module, or a ConfigError that says what to install."""
    try:
        return importlib.import_module("interbotix_xs_msgs.msg")
    except ImportError as exc:
        raise ConfigError("outputs", [INTERBOTIX_MISSING.format(error=exc)]) from exc


def interbotix_installed() -> bool:
    """Whether the Interbotix messages can be imported here (the sim leaves their outputs out otherwise)."""
    try:
        import_interbotix_messages()
    except ConfigError:
        return False
    return True


def _arm_values(layout: CommandLayout, arm: ArmLayout, values: np.ndarray) -> list[float]:
    """6 arm joints in driver order, then the gripper motor angle when there is one (rad)."""
    joints, gripper = layout.arm_command(values, arm)
    return [float(v) for v in joints] + ([gripper] if gripper is not None else [])


class InterbotixAdapter:
    """JointGroupCommand ("arm", 6 joints) and JointSingleCommand ("gripper", motor angle) per arm."""

    def __init__(self, node: Node, layout: CommandLayout, output: InterbotixOutput):
        messages = import_interbotix_messages()
        self.group_type, self.single_type = messages.JointGroupCommand, messages.JointSingleCommand
        self.layout, self.output = layout, output
        self.arms = [
            (
                arm,
                node.create_publisher(self.group_type, output.group_topic.format(namespace=arm.arm.namespace), COMMAND_QOS),
                node.create_publisher(self.single_type, output.single_topic.format(namespace=arm.arm.namespace), COMMAND_QOS)
                if arm.gripper_index is not None else None,
            )
            for arm in layout.arms
            if arm.name in output.arms
        ]

    def send(self, values: np.ndarray) -> None:
        for arm, group, single in self.arms:
            joints, gripper = self.layout.arm_command(values, arm)
            group.publish(self.group_type(name=self.output.group_name, cmd=[float(v) for v in joints]))
            if single is not None and gripper is not None:
                single.publish(self.single_type(name=self.output.gripper_name, cmd=float(gripper)))


class JointTrajectoryAdapter:
    """One-point JointTrajectory reached in one control period (stamp zero: start on receipt)."""

    def __init__(self, node: Node, layout: CommandLayout, output: JointTrajectoryOutput, period_s: float):
        self.layout = layout
        self.time_from_start = seconds_to_duration(period_s)
        self.arms = []
        for arm in layout.arms:
            if arm.name not in output.arms:
                continue
            names = list(arm.arm.joint_names) + ([arm.gripper.joint] if arm.gripper and arm.gripper_index is not None else [])
            publisher = node.create_publisher(JointTrajectory, output.topic.format(namespace=arm.arm.namespace), COMMAND_QOS)
            self.arms.append((arm, names, publisher))

    def send(self, values: np.ndarray) -> None:
        for arm, names, publisher in self.arms:
            point = JointTrajectoryPoint(positions=_arm_values(self.layout, arm, values), time_from_start=self.time_from_start)
            publisher.publish(JointTrajectory(joint_names=names, points=[point]))


class ForwardCommandAdapter:
    """Float64MultiArray: 6 arm joints then the gripper motor angle."""

    def __init__(self, node: Node, layout: CommandLayout, output: ForwardCommandOutput):
        self.layout = layout
        self.arms = [
            (arm, node.create_publisher(Float64MultiArray, output.topic.format(namespace=arm.arm.namespace), COMMAND_QOS))
            for arm in layout.arms
            if arm.name in output.arms
        ]

    def send(self, values: np.ndarray) -> None:
        for arm, publisher in self.arms:
            publisher.publish(Float64MultiArray(data=_arm_values(self.layout, arm, values)))


class TwistAdapter:
    def __init__(self, node: Node, layout: CommandLayout, output: TwistOutput):
        self.layout = layout
        self.publisher = node.create_publisher(Twist, output.topic, COMMAND_QOS)

    def send(self, values: np.ndarray) -> None:
        linear, angular = self.layout.base_command(values)
        message = Twist()
        message.linear.x, message.angular.z = linear, angular
        self.publisher.publish(message)


def make_adapters(node: Node, layout: CommandLayout, outputs: list[OutputAdapter], period_s: float) -> list[Adapter]:
    """One adapter per configured output; ConfigError if one cannot be built here (missing messages)."""
    builders: dict[type, Callable[[Any], Adapter]] = {
        InterbotixOutput: lambda o: InterbotixAdapter(node, layout, o),
        JointTrajectoryOutput: lambda o: JointTrajectoryAdapter(node, layout, o, period_s),
        ForwardCommandOutput: lambda o: ForwardCommandAdapter(node, layout, o),
        TwistOutput: lambda o: TwistAdapter(node, layout, o),
    }
    return [builders[type(output)](output) for output in outputs]


class CommandOutputs:
    """What one control period sends: the command to every configured output (the base's Twist only
    when the period asks for it), the command on ``contract.COMMAND`` and, when given, the committed
    actions on ``contract.COMMITTED``."""

    def __init__(self, node: Node, layout: CommandLayout, outputs: list[OutputAdapter], period_s: float) -> None:
        adapters = make_adapters(node, layout, outputs, period_s)
        self.base = [a for a in adapters if isinstance(a, TwistAdapter)]
        self.arms = [a for a in adapters if not isinstance(a, TwistAdapter)]
        self.names = list(layout.names)
        self.period_s = period_s
        self.command = create_publisher(node, COMMAND)
        self.committed = create_publisher(node, COMMITTED)

    def send(self, output: ControlOutput, now_ns: int, committed: np.ndarray | None) -> None:
        for adapter in self.arms + (self.base if output.send_base else []):
            adapter.send(output.positions)
        message = JointState(name=self.names, position=output.positions.tolist(), velocity=output.velocities.tolist())
        message.header.stamp = ns_to_time(output.stamp_ns)
        self.command.publish(message)
        if committed is not None:
            self.committed.publish(committed_to_trajectory(now_ns, self.names, committed, self.period_s))
