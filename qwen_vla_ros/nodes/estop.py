"""The controller's e-stop wiring: the topic subscribed so that any publisher can stop the robot,
the reset service, and the checks that tell an operator whose e-stop cannot work.

The e-stop topic is subscribed three times (``ros_contract.ANY_SUBSCRIPTION_QOS``), so that
``true`` from any publisher stops the robot: reliable + transient local (a latched ``true``
published before the node started), reliable + volatile (every reliable publisher, delivered
reliably) and best effort + volatile (matches every publisher). ``false`` never releases the
latch; only the reset service does, and the ``false`` it publishes tells late joiners of the
latched topic. The topic's publishers are checked every ``ESTOP_CHECK_PERIOD_S`` and at every
incompatible-QoS or -type event; each one that still cannot reach a subscription is logged at
ERROR each time (``control.estop``; docs/safety.md).
"""
from __future__ import annotations

import threading

from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import QoSCompatibility, qos_check_compatible
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from qwen_vla_ros.contract import ESTOP_RESET, Topic
from qwen_vla_ros.control import Controller
from qwen_vla_ros.control.estop import EstopPublisher, estop_problems
from qwen_vla_ros.nodes.ros_contract import (
    ANY_SUBSCRIPTION_QOS,
    create_publisher,
    create_service,
    create_subscriptions_matching_any,
)

ESTOP_CHECK_PERIOD_S = 2.0  # how often a publisher that cannot stop the robot is reported again


class EstopLink:
    """Latches ``core``'s e-stop (under ``lock``) on ``true`` from any publisher of ``topic``; resets it on request."""

    def __init__(self, node: Node, topic: Topic, core: Controller, lock: threading.Lock,
                 callback_group: CallbackGroup) -> None:
        self.node, self.topic, self.core, self.lock = node, topic.name, core, lock
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_mismatch, incompatible_type=self._on_mismatch)
        create_subscriptions_matching_any(node, topic, self._on_message, callback_group=callback_group,
                                          event_callbacks=events)
        node.create_timer(ESTOP_CHECK_PERIOD_S, self.check_publishers, callback_group=callback_group)
        create_service(node, ESTOP_RESET, self._on_reset, callback_group=callback_group)
        self.publisher = create_publisher(node, topic)

    def press(self) -> None:
        """The operator's e-stop button: ``true`` on the topic, which latches this controller and any other."""
        self.publisher.publish(Bool(data=True))
        self.node.get_logger().error(f"e-stop button: e-stop engaged, holding until {ESTOP_RESET.name} is called")

    def _on_message(self, message: Bool) -> None:
        """``true`` from any of the subscriptions latches (again: idempotent); ``false`` never releases."""
        with self.lock:
            latched = self.core.estop
            if message.data:
                self.core.engage_estop()
        if message.data and not latched:
            self.node.get_logger().error(f"e-stop engaged: holding until {ESTOP_RESET.name} is called")
        elif not message.data and latched:
            self.node.get_logger().warning(f"false on {self.topic} ignored: the e-stop stays latched until "
                                           f"{ESTOP_RESET.name} is called", throttle_duration_sec=2.0)

    def _on_mismatch(self, _info: object) -> None:
        """A publisher one subscription cannot match (expected: the others may); check them all now."""
        self.check_publishers()

    def check_publishers(self) -> None:
        publishers = [
            EstopPublisher(
                f"{info.node_namespace.rstrip('/')}/{info.node_name}", info.topic_type,
                any(qos_check_compatible(info.qos_profile, qos)[0] != QoSCompatibility.ERROR
                    for qos in ANY_SUBSCRIPTION_QOS),
                f"{info.qos_profile.reliability.name.lower()}, {info.qos_profile.durability.name.lower()}",
            )
            for info in self.node.get_publishers_info_by_topic(self.topic)
        ]
        for problem in estop_problems(self.topic, publishers):
            self.node.get_logger().error(problem)

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            response.success, response.message = self.core.reset_estop()
        self.publisher.publish(Bool(data=False))  # late joiners of the latched topic see it released
        self.node.get_logger().warning(response.message)
        return response
