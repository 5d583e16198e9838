"""Controller node: the ROS shell around :class:`qwen_vla_ros.control.Controller`.

Executables ``aloha_controller``, ``widowx_controller`` and ``base_controller`` are this
node with a different default embodiment (Mobile ALOHA: ``aloha_controller`` with
``config:=aloha_mobile``). The control loop runs on its own timer in its own callback group,
so a chunk needing IK or a burst of joint states never delays it; the core is guarded by
one lock that no slow work holds (chunk preparation happens outside it).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from functools import partial

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.control import ControlOutput, Controller
from qwen_vla_ros.nodes.adapters import make_adapters
from qwen_vla_ros.nodes.common import (
    YieldingMultiThreadedExecutor,
    declare_configs,
    ns_to_time,
    run_node,
    seconds_to_duration,
    time_to_ns,
    trajectory_to_chunk,
)

CHUNK_TOPIC = "/qwen_vla/action_chunk"
COMMAND_TOPIC = "/qwen_vla/controller/command"
COMMITTED_TOPIC = "/qwen_vla/controller/committed"
STATE_TOPIC = "/qwen_vla/controller/state"
ESTOP_RESET_SERVICE = "/qwen_vla/estop/reset"
EXECUTOR_THREADS = 4  # control loop, chunks, feedback, diagnostics: none waits for another


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


class ControllerNode(Node):
    def __init__(self, default_embodiment: str = "aloha") -> None:
        super().__init__("qwen_vla_controller")
        embodiment, runtime = declare_configs(self, default_embodiment)
        state_rate = float(self.declare_parameter("state_rate_hz", 2.0).value)
        committed_rate = float(self.declare_parameter("committed_rate_hz", 50.0).value)
        self.core = Controller(embodiment, runtime)
        self.names = list(self.core.layout.names)
        self.lock = threading.Lock()
        self.adapters = make_adapters(self, self.core.layout, embodiment.outputs, self.core.period_s)

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.command_pub = self.create_publisher(JointState, COMMAND_TOPIC, reliable)
        self.committed_pub = self.create_publisher(JointTrajectory, COMMITTED_TOPIC, reliable)
        self.state_pubs = [self.create_publisher(DiagnosticArray, topic, 10) for topic in (STATE_TOPIC, "/diagnostics")]

        inputs = ReentrantCallbackGroup()
        for arm in self.core.layout.arms:
            self.create_subscription(
                JointState, arm.arm.joint_state_topic, lambda m, name=arm.name: self._on_joint_state(name, m),
                qos_profile_sensor_data, callback_group=inputs,
            )
        if self.core.layout.base is not None:
            self.create_subscription(Odometry, embodiment.base.odom_topic, self._on_odometry, qos_profile_sensor_data,
                                     callback_group=inputs)
        self.create_subscription(JointTrajectory, CHUNK_TOPIC, self._on_chunk, reliable,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(Bool, embodiment.safety.estop_topic, self._on_estop, latched, callback_group=inputs)
        self.create_service(Trigger, ESTOP_RESET_SERVICE, self._on_estop_reset, callback_group=inputs)

        self.committed_every = max(1, round(embodiment.control.rate_hz / committed_rate)) if committed_rate > 0 else 0
        self.periods = 0
        self.create_timer(self.core.period_s, self._control_period, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0 / state_rate, self._publish_state, callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f"{embodiment.name}: {len(self.names)} command channels at {embodiment.control.rate_hz:g} Hz, "
            f"{runtime.blending.method} blending, {embodiment.control.interpolation} interpolation, "
            f"outputs {[o.adapter for o in embodiment.outputs]}"
        )

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    # -- inputs -------------------------------------------------------------------------
    def _on_joint_state(self, arm: str, message: JointState) -> None:
        now = self._now()
        stamp = time_to_ns(message.header.stamp) or now
        try:
            with self.lock:
                self.core.update_joint_state(arm, message.name, message.position, stamp, now)
        except (KeyError, ValueError) as exc:
            self.get_logger().warning(f"ignoring joint state: {exc}", throttle_duration_sec=2.0)

    def _on_odometry(self, message: Odometry) -> None:
        now = self._now()
        pose, twist = message.pose.pose, message.twist.twist
        q = pose.orientation
        try:
            with self.lock:
                self.core.update_odometry((pose.position.x, pose.position.y, yaw_from_quaternion(q.x, q.y, q.z, q.w)),
                                          (twist.linear.x, twist.angular.z), time_to_ns(message.header.stamp) or now, now)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring odometry: {exc}", throttle_duration_sec=2.0)

    def _on_chunk(self, message: JointTrajectory) -> None:
        now = self._now()
        try:
            chunk = trajectory_to_chunk(message, self.core.config.control.action_dt)
        except ValueError as exc:
            with self.lock:
                outcome = self.core.reject_malformed(str(exc))
        else:
            with self.lock:
                context = self.core.chunk_context(chunk)
            prepared = self.core.prepare(chunk, now, context)  # IK, outside the lock
            with self.lock:
                outcome = self.core.accept(prepared, self._now())
        if not outcome.accepted:
            self.get_logger().warning(f"rejected action chunk ({outcome.reason}): {outcome.detail}", throttle_duration_sec=1.0)
        for warning in outcome.warnings:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)

    def _on_estop(self, message: Bool) -> None:
        if message.data:
            with self.lock:
                self.core.engage_estop()
            self.get_logger().error("e-stop engaged: holding until /qwen_vla/estop/reset is called")

    def _on_estop_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            response.success, response.message = self.core.reset_estop()
        self.get_logger().warning(response.message)
        return response

    # -- outputs ------------------------------------------------------------------------
    def _control_period(self) -> None:
        now = self._now()
        with self.lock:
            output = self.core.step(now)
            publish_committed = output is not None and self.committed_every and self.periods % self.committed_every == 0
            committed = self.core.committed(now) if publish_committed else None
        self.periods += 1
        if output is None:
            return
        for adapter in self.adapters:
            adapter.send(output.positions)
        self.command_pub.publish(self._command_message(output))
        if committed is not None:
            self.committed_pub.publish(self._committed_message(now, committed))

    def _command_message(self, output: ControlOutput) -> JointState:
        message = JointState(name=self.names, position=output.positions.tolist(), velocity=output.velocities.tolist())
        message.header.stamp = ns_to_time(output.stamp_ns)
        return message

    def _committed_message(self, now: int, rows: np.ndarray) -> JointTrajectory:
        message = JointTrajectory(joint_names=self.names)
        message.header.stamp = ns_to_time(now)
        period = self.core.period_s
        message.points = [
            JointTrajectoryPoint(positions=row.tolist(), time_from_start=seconds_to_duration((k + 1) * period))
            for k, row in enumerate(rows)
        ]
        return message

    def _publish_state(self) -> None:
        now = self._now()
        with self.lock:
            status = self.core.status(now)
        level = {"estop": DiagnosticStatus.ERROR, "stale": DiagnosticStatus.WARN, "waiting": DiagnosticStatus.WARN}
        diagnostic = DiagnosticStatus(
            level=level.get(str(status["mode"]), DiagnosticStatus.OK),
            name="qwen_vla/controller",
            message=str(status["mode"]),
            hardware_id=self.core.config.name,
            values=[KeyValue(key=key, value=str(value)) for key, value in status.items()],
        )
        message = DiagnosticArray(status=[diagnostic])
        message.header.stamp = ns_to_time(now)
        for publisher in self.state_pubs:
            publisher.publish(message)


def _main(default_embodiment: str, args: Sequence[str] | None) -> int:
    return run_node(
        ControllerNode,
        args,
        executor_factory=partial(YieldingMultiThreadedExecutor, num_threads=EXECUTOR_THREADS),
        default_embodiment=default_embodiment,
    )


def main(args: Sequence[str] | None = None) -> int:
    """``aloha_controller`` and ``python -m qwen_vla_ros.nodes.controller``: embodiment from ``config`` (default aloha)."""
    return _main("aloha", args)


def widowx_main(args: Sequence[str] | None = None) -> int:
    return _main("widowx", args)


def base_main(args: Sequence[str] | None = None) -> int:
    return _main("mobile_base", args)


if __name__ == "__main__":
    raise SystemExit(main())
