"""Heartbeats between hosts (``contract.HEARTBEAT``), the clock-offset warning they feed, and the
policy's liveness heartbeat (``contract.POLICY_HEARTBEAT``).

Any node adds ``Heartbeat(node, runtime.clock_check)``: it publishes its own clock every
``1 / heartbeat_hz`` as ``sensor_msgs/TimeReference`` (``header.stamp`` = the sender's ROS
time, ``source`` = host/node) and estimates every other sender's clock offset
(``qwen_vla_ros.clock_check``), warning when one exceeds ``max_offset_s``.

policy_node adds ``PolicyHeartbeat``: a thread of its own, not an executor timer, so that
neither a long inference nor a busy executor stops it, while a killed or hung process does.
The controller holds when it stops (``control.liveness``, docs/safety.md).
"""
from __future__ import annotations

import socket
import threading
import traceback

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import TimeReference
from std_msgs.msg import Header

from qwen_vla_ros.clock_check import ClockOffsetEstimator
from qwen_vla_ros.config.runtime import ClockCheck
from qwen_vla_ros.contract import HEARTBEAT, POLICY_HEARTBEAT
from qwen_vla_ros.nodes.common import ns_to_time, time_to_ns
from qwen_vla_ros.nodes.ros_contract import create_publisher, create_subscription

WARNING_PERIOD_S = 10.0


class Heartbeat:
    def __init__(self, node: Node, settings: ClockCheck, callback_group: CallbackGroup | None = None) -> None:
        self.node = node
        host = socket.gethostname()
        self.source = f"{host}/{node.get_fully_qualified_name().lstrip('/')}"
        self.estimator = ClockOffsetEstimator(settings.window, settings.max_offset_s, host=host)
        self.publisher = create_publisher(node, HEARTBEAT)
        create_subscription(node, HEARTBEAT, self._on_heartbeat, callback_group=callback_group)
        if settings.heartbeat_hz > 0:
            node.create_timer(1.0 / settings.heartbeat_hz, self._beat, callback_group=callback_group)

    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _beat(self) -> None:
        message = TimeReference(source=self.source)
        message.header.stamp = ns_to_time(self._now_ns())
        message.time_ref = message.header.stamp
        self.publisher.publish(message)

    def _on_heartbeat(self, message: TimeReference) -> None:
        if message.source != self.source:
            self.estimator.add(message.source, time_to_ns(message.header.stamp), self._now_ns())

    def figures(self) -> dict[str, float]:
        """Per peer offset in ms for /diagnostics (a peer on this host: its delay); warns (throttled) about remote
        peers over the threshold."""
        now_ns = self._now_ns()
        excessive = self.estimator.excessive(now_ns)
        if excessive:
            offsets = ", ".join(f"{p.peer} {p.offset_s * 1000:+.1f} ms" for p in excessive)
            self.node.get_logger().warning(
                f"clock offset over {self.estimator.max_offset_s * 1000:g} ms: {offsets}. Chunks are stamped with "
                "observation times, so sync the hosts' clocks (chrony or PTP, see docs/multi-machine.md)",
                throttle_duration_sec=WARNING_PERIOD_S,
            )
        return {f"{'heartbeat_delay_ms' if p.same_host else 'clock_offset_ms'}.{p.peer}": round(p.offset_s * 1000.0, 3)
                for p in self.estimator.offsets(now_ns)}



BEATS_PER_TIMEOUT = 5  # a few lost best-effort beats are not a lost policy


class PolicyHeartbeat:
    """Publishes ``std_msgs/Header`` (stamp = now, frame_id = host/node) every ``timeout_s / 5`` from its own thread.

    Wall-clock paced; under ``use_sim_time`` the controller judges arrivals on simulated time,
    so a simulation running more than 5x faster than real time would look like a lost policy.
    """

    def __init__(self, node: Node, timeout_s: float) -> None:
        self.node = node
        self.period_s = timeout_s / BEATS_PER_TIMEOUT
        self.source = f"{socket.gethostname()}/{node.get_fully_qualified_name().lstrip('/')}"
        self.publisher = create_publisher(node, POLICY_HEARTBEAT)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="policy_heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            message = Header(frame_id=self.source)
            message.stamp = ns_to_time(self.node.get_clock().now().nanoseconds)
            try:
                self.publisher.publish(message)
            except Exception:  # noqa: BLE001 - whatever stops the beats, the controller holds the robot (policy lost)
                if self.node.context.ok():  # not the shutdown, where no more beats is the right outcome: a fault
                    self.node.get_logger().error(f"policy heartbeat stopped:\n{traceback.format_exc()}")
                return

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=1.0)
