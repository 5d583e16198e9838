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
that keeps the newest, and are prepared on a thread of their own. The executor is rclpy's
C++ EventsExecutor where rclpy has one and the GIL switch interval is cut to 50 us
(docs/architecture.md, control loops).

Teleoperation: ``/joy`` (sensor_msgs/Joy, from joy_node or our joystick_node) feeds the
core's arbiter; the mode goes out on ``/qwen_vla/mode`` (std_msgs/String, transient local)
whenever it changes. A takeover does not wait for the next period: the Joy callback wakes
the loop, which runs a period at once (limited over the time it really covers) and counts
the following periods from there. The e-stop button publishes ``true`` on the latched e-stop topic, and
a reset through ``/qwen_vla/estop/reset`` publishes ``false``. Trial buttons call the trial
recorder's Trigger services asynchronously: the callback returns at once and the answer is
logged when it comes, so no button ever waits on the recorder.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from functools import partial

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Joy, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.control import ControlOutput, Controller
from qwen_vla_ros.control.arbitration import Transition
from qwen_vla_ros.control.loop import ControlLoop, LoopClock, Period
from qwen_vla_ros.embodiments.base import yaw_from_quaternion
from qwen_vla_ros.gate import GateFrame, GateSupervisor
from qwen_vla_ros.nodes.adapters import TwistAdapter, make_adapters
from qwen_vla_ros.nodes.chunk_gate import start_gate_process
from qwen_vla_ros.nodes.common import (
    call_trigger_logged,
    chunk_message_limit,
    declare_configs,
    low_latency_spinner,
    ns_to_time,
    run_node,
    seconds_to_duration,
    time_to_ns,
)
from qwen_vla_ros.nodes.heartbeat import Heartbeat
from qwen_vla_ros.recording.topics import MODE_TOPIC, TRIAL_SERVICES

CHUNK_TOPIC = "/qwen_vla/action_chunk"
COMMAND_TOPIC = "/qwen_vla/controller/command"
COMMITTED_TOPIC = "/qwen_vla/controller/committed"
STATE_TOPIC = "/qwen_vla/controller/state"
ESTOP_RESET_SERVICE = "/qwen_vla/estop/reset"
EXECUTOR_THREADS = 3  # without the EventsExecutor: chunks, feedback, diagnostics, none waits for another
# A thread waking at its deadline waits for the GIL about this long (Python's default: 5 ms).
GIL_SWITCH_INTERVAL_S = 0.00005
GATE_READY_TIMEOUT_S = 30.0  # the gate imports rclpy in a fresh interpreter: seconds on a loaded machine


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
        self.names = list(self.core.layout.names)
        adapters = make_adapters(self, self.core.layout, embodiment.outputs, self.core.period_s)
        self.base_adapters = [a for a in adapters if isinstance(a, TwistAdapter)]
        self.arm_adapters = [a for a in adapters if not isinstance(a, TwistAdapter)]

        publish_committed = committed_rate > 0 and self.core.layout.commands_are_actions
        if committed_rate > 0 and not publish_committed:
            self.get_logger().info(f"{embodiment.name}: no {COMMITTED_TOPIC}, its commands {self.names} are not its "
                                   "action channels (real-time chunking is off for it)")
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
        self.chunk_topic = self.resolve_topic_name(CHUNK_TOPIC)
        self.gate = GateSupervisor(
            partial(start_gate_process, self.chunk_topic, max_chunk_bytes, embodiment.control.action_dt,
                    f"{self.get_name()}_chunk_gate"),
            lambda frame: self.loop.submit(frame, frame.size_bytes), self.get_logger(), period_s=self.core.period_s)
        self.gate.start()

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
        self.create_subscription(Bool, embodiment.safety.estop_topic, self._on_estop, latched, callback_group=inputs)
        self.create_service(Trigger, ESTOP_RESET_SERVICE, self._on_estop_reset, callback_group=inputs)
        # Chunks carry the policy host's observation stamps: this is where a clock offset bites.
        self.heartbeat = Heartbeat(self, runtime.clock_check, callback_group=inputs)

        # Best effort matches joy_node's reliable publisher as well as best-effort ones.
        self.create_subscription(Joy, embodiment.teleop.joy_topic, self._on_joy,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT), callback_group=inputs)
        for arm in self.core.teleop.leaders.arms:  # empty unless leader_follow is enabled
            self.create_subscription(JointState, embodiment.teleop.leader_follow.topics[arm],
                                     lambda m, name=arm: self._on_leader(name, m), qos_profile_sensor_data, callback_group=inputs)
        self.estop_pub = self.create_publisher(Bool, embodiment.safety.estop_topic, latched)
        self.mode_pub = self.create_publisher(String, MODE_TOPIC, latched)
        self.trial_clients = {event: self.create_client(Trigger, name) for event, name in TRIAL_SERVICES.items()}
        self.mode_lock = threading.Lock()
        self.published_mode: str | None = None
        self._publish_mode([])

        if not self.gate.ready.wait(GATE_READY_TIMEOUT_S):  # commanding without taking chunks would look alive
            self.get_logger().error(f"chunk gate not subscribed to {self.chunk_topic} after {GATE_READY_TIMEOUT_S:g} s: "
                                    "no chunks are taken in until it is")
        sim_time = bool(self.get_parameter("use_sim_time").value)
        if sim_time:
            self.create_timer(self.core.period_s, self.loop.run_period, callback_group=MutuallyExclusiveCallbackGroup())
        self.loop.start(paced=not sim_time)
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

    def _on_joy(self, message: Joy) -> None:
        try:
            with self.lock:
                outcome = self.core.update_joy(message.axes, message.buttons, self._now())
                transitions = self.core.take_transitions()
                jog = f"{self.core.teleop.selected_arm} arm, {self.core.teleop.mode} jog"  # for the log
        except ValueError as exc:
            self.get_logger().warning(f"ignoring Joy: {exc}", throttle_duration_sec=2.0)
            return
        self._publish_mode(transitions)
        if any(transition.mode == "teleop" for transition in outcome.transitions):
            self.loop.wake()  # the operator's first command goes out now, not at the next period
        for event in outcome.events:
            if event == "estop":
                self.estop_pub.publish(Bool(data=True))
                self.get_logger().error("e-stop button: e-stop engaged, holding until /qwen_vla/estop/reset is called")
            elif event in self.trial_clients:
                call_trigger_logged(self, self.trial_clients[event], f"{event} button", "trial_recorder")
            elif event in ("arm_select", "jog_mode"):
                self.get_logger().info(f"teleop: {jog}")
            elif event == "resume_ignored":
                self.get_logger().warning("resume_policy ignored: release the deadman first", throttle_duration_sec=1.0)

    def _on_leader(self, arm: str, message: JointState) -> None:
        try:
            with self.lock:
                self.core.update_leader(arm, message.name, message.position, self._now())
        except (KeyError, ValueError) as exc:
            self.get_logger().warning(f"ignoring leader joint state: {exc}", throttle_duration_sec=2.0)

    def _publish_mode(self, transitions: list[Transition]) -> None:
        """Publish the arbitration mode if it changed; ``transitions`` are logged with their reasons."""
        for transition in transitions:
            self.get_logger().warning(f"mode {transition.previous} -> {transition.mode}: {transition.reason}")
        with self.mode_lock:
            mode = self.core.arbiter.mode
            if mode != self.published_mode:
                self.mode_pub.publish(String(data=mode))
                self.published_mode = mode

    def _on_estop(self, message: Bool) -> None:
        if message.data:
            with self.lock:
                self.core.engage_estop()
            self.get_logger().error("e-stop engaged: holding until /qwen_vla/estop/reset is called")

    def _on_estop_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            response.success, response.message = self.core.reset_estop()
        self.estop_pub.publish(Bool(data=False))  # late joiners of the latched topic see it released
        self.get_logger().warning(response.message)
        return response

    # -- outputs ------------------------------------------------------------------------
    def destroy_node(self) -> None:
        # The loop first: it publishes until stopped. Absent when a bad config stopped the constructor before them.
        for part in ("loop", "gate"):
            if hasattr(self, part):
                getattr(self, part).stop()
        super().destroy_node()

    def _publish_period(self, period: Period) -> None:
        if period.transitions:
            self._publish_mode(period.transitions)
        output = period.output
        if output is None:
            return
        for adapter in self.arm_adapters + (self.base_adapters if output.send_base else []):
            adapter.send(output.positions)
        self.command_pub.publish(self._command_message(output))
        if period.committed is not None:
            self.committed_pub.publish(self._committed_message(period.now_ns, period.committed))

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
        status = self.loop.status(now)
        status.update(self.heartbeat.figures())
        gate = self.gate.figures()
        status.update(gate, chunks_dropped=status["chunks_dropped"] + gate["gate_dropped"])  # newer ones took their place
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
