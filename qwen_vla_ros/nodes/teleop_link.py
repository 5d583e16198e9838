"""The controller's operator side in ROS terms: Joy and leader-arm joint states in, the arbitration
mode out, and the buttons' side effects (e-stop, trial services, a takeover served at once).

``/joy`` (sensor_msgs/Joy, from joy_node or our joystick_node) feeds the core's arbiter; the
mode goes out on ``contract.MODE`` (std_msgs/String, latched) whenever it changes. A takeover
does not wait for the next period: the Joy callback wakes the loop, which runs a period at once
(limited over the time it really covers) and counts the following periods from there. Trial
buttons call the trial recorder's Trigger services asynchronously: the callback returns at once
and the answer is logged when it comes, so no button ever waits on the recorder. The
recorder's ``contract.TRIAL_EVENT`` tells the arbiter when a trial started or ended, whoever
asked for it (docs/operation.md, "Trials").
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.contract import MODE, TRIAL_EVENT, TRIAL_SERVICES, Topic
from qwen_vla_ros.control import Controller
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.nodes.common import call_trigger_logged
from qwen_vla_ros.nodes.estop import EstopLink
from qwen_vla_ros.nodes.ros_contract import create_client, create_publisher, create_subscription
from qwen_vla_ros.teleop.arbitration import Transition, parse_trial_event


class TeleopLink:
    """Feeds ``core`` (under ``lock``) from the operator's topics; ``wake`` runs the control loop's next period now."""

    def __init__(self, node: Node, embodiment: EmbodimentConfig, inbound: Mapping[str, Topic], core: Controller,
                 lock: threading.Lock, estop: EstopLink, wake: Callable[[], None], callback_group: CallbackGroup) -> None:
        self.node, self.core, self.lock, self.estop, self.wake = node, core, lock, estop, wake
        create_subscription(node, inbound[embodiment.teleop.joy_topic], self._on_joy, callback_group=callback_group)
        for leader in core.teleop.leaders.arms:  # empty unless leader_follow is enabled
            create_subscription(node, inbound[embodiment.teleop.leader_follow.topics[leader]],
                                partial(self._on_leader, leader), callback_group=callback_group)
        create_subscription(node, TRIAL_EVENT, self._on_trial_event, callback_group=callback_group)
        self.mode_pub = create_publisher(node, MODE)
        self.trial_clients = {event: create_client(node, service) for event, service in TRIAL_SERVICES.items()}
        self.mode_lock = threading.Lock()
        self.published_mode: str | None = None
        self.publish_mode([])

    def publish_mode(self, transitions: list[Transition]) -> None:
        """Publish the arbitration mode if it changed; ``transitions`` are logged with their reasons."""
        for transition in transitions:
            self.node.get_logger().warning(f"mode {transition.previous} -> {transition.mode}: {transition.reason}")
        with self.mode_lock:
            mode = self.core.arbiter.mode
            if mode != self.published_mode:
                self.mode_pub.publish(String(data=mode))
                self.published_mode = mode

    def _now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_joy(self, message: Joy) -> None:
        log = self.node.get_logger()
        try:
            with self.lock:
                outcome = self.core.update_joy(message.axes, message.buttons, self._now())
                transitions = self.core.take_transitions()
                jog = f"{self.core.teleop.selected_arm} arm, {self.core.teleop.mode} jog"  # for the log
        except ValueError as exc:
            log.warning(f"ignoring Joy: {exc}", throttle_duration_sec=2.0)
            return
        self.publish_mode(transitions)
        if any(transition.mode == "teleop" for transition in outcome.transitions):
            self.wake()  # the operator's first command goes out now, not at the next period
        for event in outcome.events:
            if event == "estop":
                self.estop.press()
            elif event in self.trial_clients:
                call_trigger_logged(self.node, self.trial_clients[event], f"{event} button", "trial_recorder")
            elif event in ("arm_select", "jog_mode"):
                log.info(f"teleop: {jog}")
            elif event == "resume_ignored":
                log.warning("resume_policy ignored: release the deadman first", throttle_duration_sec=1.0)

    def _on_leader(self, arm: str, message: JointState) -> None:
        try:
            with self.lock:
                self.core.update_leader(arm, message.name, message.position, self._now())
        except (KeyError, ValueError) as exc:
            self.node.get_logger().warning(f"ignoring leader joint state: {exc}", throttle_duration_sec=2.0)

    def _on_trial_event(self, message: String) -> None:
        try:
            change, trial = parse_trial_event(message.data)
        except MalformedMessageError as exc:
            self.node.get_logger().warning(f"ignoring trial event: {exc}", throttle_duration_sec=2.0)
            return
        with self.lock:
            self.core.trial_changed(change, trial)
            transitions = self.core.take_transitions()
        self.publish_mode(transitions)
