"""The controller's conversation with each Interbotix xs_sdk driver before the first command.

For every arm of an ``interbotix`` output: with ``configure_robot:=true`` first write the
modes and the gripper's current limit (``set_operating_modes``, ``set_motor_registers``);
then ask ``get_robot_info`` for the arm group and the gripper and wait for one joint-state
message. The answers go to :func:`qwen_vla_ros.control.preflight.check_arm`, which decides;
this module only translates. Every wait is bounded by ``preflight.timeout_s``: a driver that
does not answer is a refusal, never a hang.

The calls run on a private node with its own executor, so the controller's callbacks do not
run (and no command can go out) before the verdict.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.config.hardware import Arm, InterbotixOutput
from qwen_vla_ros.contract import DIAGNOSTICS, Service, driver_services, graph_topics
from qwen_vla_ros.control.preflight import (
    GROUP,
    SINGLE,
    ArmAnswers,
    DriverInfo,
    Mismatch,
    ModeWrite,
    RegisterWrite,
    check_arm,
    configure_writes,
    refusal_message,
)
from qwen_vla_ros.nodes.ros_contract import (
    Level,
    create_client,
    create_publisher,
    create_subscription,
    diagnostic_array,
    diagnostic_status,
)

DIAGNOSTIC_NAME = "qwen_vla/interbotix_preflight"
RETRY_PERIOD_S = 0.5  # a driver request unanswered this long is sent again (ArmDriver.call)
REFUSAL_REPEAT_S = 1.0  # the refusal's diagnostic is published again this often, for late subscribers


def _driver_info(response: Any) -> DriverInfo:
    return DriverInfo(
        mode=response.mode, joint_names=tuple(response.joint_names),
        lower_limits=tuple(float(v) for v in response.joint_lower_limits),
        upper_limits=tuple(float(v) for v in response.joint_upper_limits),
        velocity_limits=tuple(float(v) for v in response.joint_velocity_limits),
        state_indices=tuple(int(v) for v in response.joint_state_indices),
        sleep_positions=tuple(float(v) for v in response.joint_sleep_positions),
    )


class ArmDriver:
    """One arm's xs_sdk services, called one at a time, each bounded by ``timeout_s``."""

    def __init__(self, node: Node, executor: SingleThreadedExecutor, arm: Arm, timeout_s: float):
        self.node, self.executor, self.arm, self.timeout_s = node, executor, arm, timeout_s
        services = driver_services(arm.namespace)
        self.clients = {key: create_client(node, service) for key, service in services.items()}
        self.services: dict[str, Service] = services
        self.srv = importlib.import_module("interbotix_xs_msgs.srv")

    def call(self, key: str, request: Any) -> Any | None:
        """The response, or None when the service did not appear or answer within the timeout.

        A request sent as soon as the service appears can be answered into the void: DDS may
        match the client's request writer before its response reader, and the driver's answer is
        then dropped. So the request is sent again every ``RETRY_PERIOD_S`` until the timeout;
        every driver service used here is a query or an idempotent write (the same mode or
        register value again)."""
        client = self.clients[key]
        deadline = time.monotonic() + self.timeout_s
        if not client.wait_for_service(timeout_sec=self.timeout_s):
            return None
        while True:
            future: Future = client.call_async(request)
            remaining = deadline - time.monotonic()
            self.executor.spin_until_future_complete(future, timeout_sec=max(0.0, min(RETRY_PERIOD_S, remaining)))
            if future.done():
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                return None

    def robot_info(self, cmd_type: str, name: str) -> DriverInfo | None:
        response = self.call("get_robot_info", self.srv.RobotInfo.Request(cmd_type=cmd_type, name=name))
        return None if response is None else _driver_info(response)

    def write(self, write: ModeWrite | RegisterWrite) -> bool:
        """Send one planned write; False when the driver did not answer."""
        if isinstance(write, ModeWrite):
            request = self.srv.OperatingModes.Request(
                cmd_type=write.cmd_type, name=write.name, mode=write.mode, profile_type=write.profile_type,
                profile_velocity=write.profile_velocity, profile_acceleration=write.profile_acceleration)
            return self.call("set_operating_modes", request) is not None
        request = self.srv.RegisterValues.Request(cmd_type=write.cmd_type, name=write.name, reg=write.reg,
                                                  value=write.value)
        return self.call("set_motor_registers", request) is not None


def _first_joint_state(node: Node, executor: SingleThreadedExecutor, topic_name: str, config: EmbodimentConfig,
                       timeout_s: float) -> tuple[str, ...] | None:
    """The names of the first message on ``topic_name``, or None after ``timeout_s``."""
    topic = next(t for t in graph_topics(config) if t.name == topic_name)
    received: Future = Future()

    def on_message(message: JointState) -> None:
        if not received.done():
            received.set_result(tuple(message.name))

    subscription = create_subscription(node, topic, on_message)
    try:
        executor.spin_until_future_complete(received, timeout_sec=timeout_s)
    finally:
        node.destroy_subscription(subscription)
    return received.result() if received.done() else None


def check_drivers(parent: Node, config: EmbodimentConfig, configure: bool,
                  log: Callable[[str], object]) -> tuple[list[Mismatch], dict[str, list[float]]]:
    """Configure (when asked) and check every arm of every ``interbotix`` output: the mismatches found, and
    each answering arm group's sleep positions (for the hand-back)."""
    node = Node(f"{parent.get_name()}_interbotix_preflight", context=parent.context)
    executor = SingleThreadedExecutor(context=parent.context)
    executor.add_node(node)
    found: list[Mismatch] = []
    sleep_positions: dict[str, list[float]] = {}
    try:
        for output in (o for o in config.outputs if isinstance(o, InterbotixOutput) and o.preflight.enabled):
            for arm in (config.arm(name) for name in output.arms):
                mismatches, group = _check_arm(node, executor, config, arm, output, configure, log)
                found += mismatches
                if group is not None:
                    sleep_positions[arm.name] = list(group.sleep_positions)
    finally:
        executor.remove_node(node)
        executor.shutdown()
        node.destroy_node()
    return found, sleep_positions


def _check_arm(node: Node, executor: SingleThreadedExecutor, config: EmbodimentConfig, arm: Arm,
               output: InterbotixOutput, configure: bool,
               log: Callable[[str], object]) -> tuple[list[Mismatch], DriverInfo | None]:
    timeout_s = output.preflight.timeout_s
    driver = ArmDriver(node, executor, arm, timeout_s)
    if configure:
        for write in configure_writes(arm, output):
            service = "set_operating_modes" if isinstance(write, ModeWrite) else "set_motor_registers"
            if not driver.write(write):
                return [Mismatch(arm.name, write.name, f"{service} ({write})", "answered",
                                 f"no answer within {timeout_s:g} s")], None
            log(f"configure_robot: arm {arm.name!r} ({arm.namespace}): {service} {write}")
    answers = ArmAnswers(
        group=driver.robot_info(GROUP, output.group_name),
        gripper=driver.robot_info(SINGLE, output.gripper_name) if arm.gripper is not None else None,
        joint_state_names=_first_joint_state(node, executor, arm.joint_state_topic, config, timeout_s),
    )
    return check_arm(arm, output, answers), answers.group


class InterbotixPreflight:
    """Run at controller start: ``passed`` says whether commanding may start.

    On a refusal the one message is logged at ERROR and an ERROR diagnostic naming every
    mismatch is published on ``/diagnostics`` now and every :data:`REFUSAL_REPEAT_S`, so a
    dashboard that starts later still sees why the arms do not move.
    """

    def __init__(self, node: Node, config: EmbodimentConfig, sim_time: bool):
        self.node, self.config = node, config
        configure = bool(node.declare_parameter("configure_robot", False).value)
        outputs = [o for o in config.outputs if isinstance(o, InterbotixOutput)]
        self.mismatches: list[Mismatch] = []
        self.sleep_positions: dict[str, list[float]] = {}  # arm -> the driver's joint_sleep_positions
        if not outputs or sim_time:
            # Under simulated time sim_node stands in for the drivers and serves none of their services.
            return
        if not any(o.preflight.enabled for o in outputs):
            node.get_logger().warning(f"{config.name}: Interbotix preflight disabled in the config: the drivers' "
                                      "modes and limits are not checked")
            return
        self.mismatches, self.sleep_positions = check_drivers(node, config, configure, node.get_logger().info)
        if self.mismatches:
            node.get_logger().error(refusal_message(self.mismatches))
            self.publisher = create_publisher(node, DIAGNOSTICS)
            self._publish_refusal()
            node.create_timer(REFUSAL_REPEAT_S, self._publish_refusal)
        else:
            node.get_logger().info(f"{config.name}: Interbotix preflight passed "
                                   f"({'configured, then ' if configure else ''}modes, joints and limits checked)")

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def _publish_refusal(self) -> None:
        values = {f"{m.arm}/{m.joint}/{m.check}": f"config {m.config}, driver {m.driver}" for m in self.mismatches}
        status = diagnostic_status(DIAGNOSTIC_NAME, refusal_message(self.mismatches), values, Level.ERROR,
                                   self.config.name)
        self.publisher.publish(diagnostic_array([status], self.node.get_clock().now().nanoseconds))
