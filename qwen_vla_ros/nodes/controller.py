"""Controller node: the ROS shell around :class:`qwen_vla_ros.control.Controller`.

Executables ``aloha_controller``, ``widowx_controller`` and ``base_controller`` are this
node with a different default embodiment (Mobile ALOHA: ``aloha_controller`` with
``config:=aloha_mobile``).

The loop, its lock and the chunk intake are :class:`qwen_vla_ros.control.loop.ControlLoop`
(no ROS): a thread sleeping to absolute deadlines at ``control.realtime_priority``
(SCHED_FIFO) where the host allows it, or under ``use_sim_time`` a ROS timer that follows
``/clock``. The chunk subscription lives in a child process, the chunk gate
(``nodes.chunk_gate``, docs/architecture.md, chunk intake), so no chunk, however large, is
copied by this interpreter: chunks arrive from it sized and decoded, wait in a bounded queue
that keeps the newest, and are prepared on a thread of their own. Why the EventsExecutor,
SCHED_FIFO on the loop thread and the 50 us GIL switch interval: docs/architecture.md,
"Executors and timing".

Teleoperation (Joy, leader arms, the arbitration mode, the buttons) is
:class:`qwen_vla_ros.nodes.teleop_link.TeleopLink`; the e-stop topic, its reset and the checks
of its publishers are :class:`qwen_vla_ros.nodes.estop.EstopLink` (docs/safety.md). The
policy's heartbeat (``contract.POLICY_HEARTBEAT``) is passed to the core on arrival; the core
decides when the policy is lost.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.contract import (
    COMMITTED,
    CONTROLLER_STATE,
    CONTROLLER_STATUS,
    DIAGNOSTICS,
    POLICY_HEARTBEAT,
    NodeRole,
    role_view,
)
from qwen_vla_ros.control import Controller
from qwen_vla_ros.control.diagnostics import controller_status
from qwen_vla_ros.control.loop import ControlLoop, LoopClock, Period
from qwen_vla_ros.gate import GateFrame
from qwen_vla_ros.nodes.adapters import CommandOutputs
from qwen_vla_ros.nodes.chunk_gate import start_chunk_gate, wait_for_gate
from qwen_vla_ros.nodes.common import (
    declare_configs,
    low_latency_spinner,
    run_node,
    time_to_ns,
)
from qwen_vla_ros.nodes.estop import EstopLink
from qwen_vla_ros.nodes.hand_back import HandBack
from qwen_vla_ros.nodes.heartbeat import Heartbeat
from qwen_vla_ros.nodes.interbotix_driver import InterbotixPreflight
from qwen_vla_ros.nodes.ros_contract import (
    chunk_message_limit,
    create_publisher,
    create_subscription,
    diagnostic_array,
    diagnostic_status,
    msg_to_odometry,
)
from qwen_vla_ros.nodes.start_pose import StartPoseService
from qwen_vla_ros.nodes.teleop_link import TeleopLink

EXECUTOR_THREADS = 3  # without the EventsExecutor: chunks, feedback, diagnostics, none waits for another
# Python's default is 5 ms; why 50 us: docs/architecture.md, "Executors and timing".
GIL_SWITCH_INTERVAL_S = 0.00005


class ControllerNode(Node):
    def __init__(self, default_embodiment: str = "aloha") -> None:
        super().__init__("qwen_vla_controller")
        embodiment, runtime = declare_configs(self, default_embodiment)
        state_rate = float(self.declare_parameter("state_rate_hz", 2.0).value)
        committed_rate = float(self.declare_parameter("committed_rate_hz", 50.0).value)
        try:
            self.core = Controller(embodiment, runtime)
        except (KeyError, ValueError) as exc:  # built from config alone: whatever it refuses is bad config
            raise ConfigError(embodiment.name, [str(exc)]) from exc
        self.outputs = CommandOutputs(self, self.core.layout, embodiment.outputs, self.core.period_s)

        publish_committed = committed_rate > 0 and embodiment.commands_are_actions
        if committed_rate > 0 and not publish_committed:
            self.get_logger().info(f"{embodiment.name}: no {COMMITTED.name}, its commands {self.outputs.names} are "
                                   "not its action channels (real-time chunking is off for it)")
        max_chunk_bytes = chunk_message_limit(embodiment.action.names, embodiment.safety.max_chunk_actions)
        self.loop: ControlLoop[GateFrame] = ControlLoop(
            self.core,
            decode=GateFrame.decoded,
            publish=self._publish_period,
            log=self.get_logger(),
            max_message_bytes=max_chunk_bytes,
            queue_depth=runtime.blending.queue_depth,
            committed_every=max(1, round(embodiment.control.rate_hz / committed_rate)) if publish_committed else 0,
            clock=LoopClock(now_ns=self._now),
            alive=self.context.ok,
        )
        self.lock = self.loop.lock
        # The chunk subscription (serialized, sized before decoding) is the gate's, a process of its own,
        # started first so that its start-up overlaps ours; a refusal by size reaches the loop as a notice
        # carrying that size, which the loop refuses again.
        self.gate = start_chunk_gate(self, max_chunk_bytes, embodiment.control.action_dt,
                                     lambda frame: self.loop.submit(frame, frame.size_bytes), self.core.period_s)

        inbound = {topic.name: topic for topic in role_view(NodeRole.CONTROLLER, embodiment).subscribes}
        self.state_pubs = [create_publisher(self, topic) for topic in (CONTROLLER_STATE, DIAGNOSTICS)]
        inputs = ReentrantCallbackGroup()
        for arm in self.core.layout.arms:
            create_subscription(self, inbound[arm.arm.joint_state_topic],
                                partial(self._on_joint_state, arm.name), callback_group=inputs)
        if self.core.layout.base is not None:
            odom_topic = embodiment.require_base("base odometry").odom_topic
            create_subscription(self, inbound[odom_topic], self._on_odometry, callback_group=inputs)
        self.estop = EstopLink(self, inbound[embodiment.safety.estop_topic], self.core, self.lock, inputs)
        create_subscription(self, POLICY_HEARTBEAT, self._on_policy_heartbeat, callback_group=inputs)
        self.start_pose = StartPoseService(self, self.core, self.lock, embodiment)  # move_to_start (docs/operation.md)
        # Chunks carry the policy host's observation stamps: this is where a clock offset bites.
        self.heartbeat = Heartbeat(self, runtime.clock_check, callback_group=inputs)

        self.teleop = TeleopLink(self, embodiment, inbound, self.core, self.lock, self.estop, self.loop.wake, inputs)

        wait_for_gate(self, self.gate)
        sim_time = bool(self.get_parameter("use_sim_time").value)
        # Interbotix drivers are asked what they are first; on a mismatch the loop never starts. At shutdown the arms
        # hold before commands stop (docs/operation.md, "Interbotix preflight", "Hand-back").
        preflight = InterbotixPreflight(self, embodiment, sim_time)
        if preflight.passed:
            if sim_time:
                self.create_timer(self.core.period_s, self.loop.run_period,
                                  callback_group=MutuallyExclusiveCallbackGroup())
            self.loop.start(paced=not sim_time)
        self.hand_back = HandBack(self, self.core, self.lock, self.loop, embodiment, preflight.sleep_positions,
                                  commanding=preflight.passed, sim_time=sim_time)
        self.create_timer(1.0 / state_rate, self._publish_state, callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f"{embodiment.name}: {len(self.outputs.names)} command channels at {embodiment.control.rate_hz:g} Hz, "
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
        pose, twist, stamp = msg_to_odometry(message)
        try:
            with self.lock:
                self.core.update_odometry(pose, twist, stamp or now, now)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring odometry: {exc}", throttle_duration_sec=2.0)

    def _on_policy_heartbeat(self, _message: Header) -> None:
        now = self._now()  # arrival on this clock: the policy host's clock offset does not matter
        with self.lock:
            self.core.policy_heartbeat(now)

    # -- outputs ------------------------------------------------------------------------
    def destroy_node(self) -> None:
        # The loop first: it publishes until stopped. Absent when a bad config stopped the constructor before them.
        for part in ("loop", "gate"):
            if hasattr(self, part):
                getattr(self, part).stop()
        super().destroy_node()

    def _publish_period(self, period: Period) -> None:
        if period.transitions:
            self.teleop.publish_mode(period.transitions)
        if period.output is not None:
            self.outputs.send(period.output, period.now_ns, period.committed)

    def _publish_state(self) -> None:
        now = self._now()
        status, level = controller_status(self.loop.status(now), self.heartbeat.figures(), self.gate.figures())
        diagnostic = diagnostic_status(CONTROLLER_STATUS, str(status["mode"]), status, level, self.core.config.name)
        message = diagnostic_array([diagnostic], now)
        for publisher in self.state_pubs:
            publisher.publish(message)


def _main(default_embodiment: str, args: Sequence[str] | None) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return run_node(
        ControllerNode,
        args,
        executor_factory=partial(low_latency_spinner, EXECUTOR_THREADS),
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
