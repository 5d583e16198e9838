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

Teleoperation: ``/joy`` (sensor_msgs/Joy, from joy_node or our joystick_node) feeds the
core's arbiter; the mode goes out on ``contract.MODE`` (std_msgs/String, latched)
whenever it changes. A takeover does not wait for the next period: the Joy callback wakes
the loop, which runs a period at once (limited over the time it really covers) and counts
the following periods from there. The e-stop button publishes ``true`` on the latched e-stop topic, and
a reset through ``contract.ESTOP_RESET`` publishes ``false``.

E-stop and policy watchdog (docs/safety.md). The e-stop topic is subscribed three times, so
that ``true`` from any publisher stops the robot: reliable + transient local (a latched
``true`` published before this node started), reliable + volatile (every reliable publisher,
delivered reliably) and best effort + volatile (matches every publisher). ``false`` never
releases the latch. The topic's publishers are checked every ``ESTOP_CHECK_PERIOD_S`` and at
every incompatible-QoS or -type event, and each one that still cannot reach a subscription is
logged at ERROR each time. The policy's heartbeat (``contract.POLICY_HEARTBEAT``) is passed
to the core on arrival; the core decides when the policy is lost. Trial buttons call the trial
recorder's Trigger services asynchronously: the callback returns at once and the answer is
logged when it comes, so no button ever waits on the recorder.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from functools import partial

from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import QoSCompatibility, qos_check_compatible
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import Trigger

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.contract import (
    ACTION_CHUNK,
    COMMAND,
    COMMITTED,
    CONTROLLER_STATE,
    DIAGNOSTICS,
    ESTOP_RESET,
    MODE,
    POLICY_HEARTBEAT,
    TRIAL_SERVICES,
    NodeRole,
    role_view,
)
from qwen_vla_ros.control import Controller, ControlOutput
from qwen_vla_ros.control.estop import EstopPublisher, estop_problems
from qwen_vla_ros.control.loop import ControlLoop, LoopClock, Period
from qwen_vla_ros.embodiments.base import yaw_from_quaternion
from qwen_vla_ros.gate import GateFrame, GateSupervisor
from qwen_vla_ros.nodes.adapters import TwistAdapter, make_adapters
from qwen_vla_ros.nodes.chunk_gate import start_gate_process
from qwen_vla_ros.nodes.common import (
    call_trigger_logged,
    declare_configs,
    low_latency_spinner,
    ns_to_time,
    run_node,
    time_to_ns,
)
from qwen_vla_ros.nodes.hand_back import HandBack
from qwen_vla_ros.nodes.heartbeat import Heartbeat
from qwen_vla_ros.nodes.interbotix_driver import InterbotixPreflight
from qwen_vla_ros.nodes.ros_contract import (
    ANY_SUBSCRIPTION_QOS,
    Level,
    chunk_message_limit,
    committed_to_trajectory,
    create_client,
    create_publisher,
    create_service,
    create_subscription,
    create_subscriptions_matching_any,
    diagnostic_array,
    diagnostic_status,
)
from qwen_vla_ros.nodes.start_pose import StartPoseService
from qwen_vla_ros.teleop.arbitration import Transition

EXECUTOR_THREADS = 3  # without the EventsExecutor: chunks, feedback, diagnostics, none waits for another
# Python's default is 5 ms; why 50 us: docs/architecture.md, "Executors and timing".
GIL_SWITCH_INTERVAL_S = 0.00005
ESTOP_CHECK_PERIOD_S = 2.0  # how often a publisher that cannot stop the robot is reported again
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

        publish_committed = committed_rate > 0 and embodiment.commands_are_actions
        if committed_rate > 0 and not publish_committed:
            self.get_logger().info(f"{embodiment.name}: no {COMMITTED.name}, its commands {self.names} are not its "
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
        self.chunk_topic = self.resolve_topic_name(ACTION_CHUNK.name)
        self.gate = GateSupervisor(
            partial(start_gate_process, self.chunk_topic, max_chunk_bytes, embodiment.control.action_dt,
                    f"{self.get_name()}_chunk_gate"),
            lambda frame: self.loop.submit(frame, frame.size_bytes), self.get_logger(), period_s=self.core.period_s)
        self.gate.start()

        inbound = {topic.name: topic for topic in role_view(NodeRole.CONTROLLER, embodiment).subscribes}
        estop = inbound[embodiment.safety.estop_topic]
        self.command_pub = create_publisher(self, COMMAND)
        self.committed_pub = create_publisher(self, COMMITTED)
        self.state_pubs = [create_publisher(self, topic) for topic in (CONTROLLER_STATE, DIAGNOSTICS)]

        inputs = ReentrantCallbackGroup()
        for arm in self.core.layout.arms:
            create_subscription(self, inbound[arm.arm.joint_state_topic],
                                partial(self._on_joint_state, arm.name), callback_group=inputs)
        if self.core.layout.base is not None:
            odom_topic = embodiment.require_base("base odometry").odom_topic
            create_subscription(self, inbound[odom_topic], self._on_odometry, callback_group=inputs)
        self.estop_topic = estop.name
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_estop_mismatch,
                                            incompatible_type=self._on_estop_mismatch)
        create_subscriptions_matching_any(self, estop, self._on_estop, callback_group=inputs, event_callbacks=events)
        self.create_timer(ESTOP_CHECK_PERIOD_S, self._check_estop_publishers, callback_group=inputs)
        create_subscription(self, POLICY_HEARTBEAT, self._on_policy_heartbeat, callback_group=inputs)
        create_service(self, ESTOP_RESET, self._on_estop_reset, callback_group=inputs)
        self.start_pose = StartPoseService(self, self.core, self.lock, embodiment)  # move_to_start (docs/operation.md)
        # Chunks carry the policy host's observation stamps: this is where a clock offset bites.
        self.heartbeat = Heartbeat(self, runtime.clock_check, callback_group=inputs)

        create_subscription(self, inbound[embodiment.teleop.joy_topic], self._on_joy, callback_group=inputs)
        for leader in self.core.teleop.leaders.arms:  # empty unless leader_follow is enabled
            create_subscription(self, inbound[embodiment.teleop.leader_follow.topics[leader]],
                                partial(self._on_leader, leader), callback_group=inputs)
        self.estop_pub = create_publisher(self, estop)
        self.mode_pub = create_publisher(self, MODE)
        self.trial_clients = {event: create_client(self, service) for event, service in TRIAL_SERVICES.items()}
        self.mode_lock = threading.Lock()
        self.published_mode: str | None = None
        self._publish_mode([])

        if not self.gate.ready.wait(GATE_READY_TIMEOUT_S):  # commanding without taking chunks would look alive
            self.get_logger().error(f"chunk gate not subscribed to {self.chunk_topic} after {GATE_READY_TIMEOUT_S:g} s: "
                                    "no chunks are taken in until it is")
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
                self.get_logger().error(f"e-stop button: e-stop engaged, holding until {ESTOP_RESET.name} is called")
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
        """``true`` from any of the e-stop subscriptions latches (again: idempotent); ``false`` never releases."""
        with self.lock:
            latched = self.core.estop
            if message.data:
                self.core.engage_estop()
        if message.data and not latched:
            self.get_logger().error(f"e-stop engaged: holding until {ESTOP_RESET.name} is called")
        elif not message.data and latched:
            self.get_logger().warning(f"false on {self.estop_topic} ignored: the e-stop stays latched until "
                                      f"{ESTOP_RESET.name} is called", throttle_duration_sec=2.0)

    def _on_estop_mismatch(self, _info: object) -> None:
        """A publisher one e-stop subscription cannot match (expected: the others may); check them all now."""
        self._check_estop_publishers()

    def _check_estop_publishers(self) -> None:
        publishers = [
            EstopPublisher(
                f"{info.node_namespace.rstrip('/')}/{info.node_name}", info.topic_type,
                any(qos_check_compatible(info.qos_profile, qos)[0] != QoSCompatibility.ERROR
                    for qos in ANY_SUBSCRIPTION_QOS),
                f"{info.qos_profile.reliability.name.lower()}, {info.qos_profile.durability.name.lower()}",
            )
            for info in self.get_publishers_info_by_topic(self.estop_topic)
        ]
        for problem in estop_problems(self.estop_topic, publishers):
            self.get_logger().error(problem)

    def _on_policy_heartbeat(self, _message: Header) -> None:
        now = self._now()  # arrival on this clock: the policy host's clock offset does not matter
        with self.lock:
            self.core.policy_heartbeat(now)

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
            self.committed_pub.publish(committed_to_trajectory(period.now_ns, self.names, period.committed,
                                                               self.core.period_s))

    def _command_message(self, output: ControlOutput) -> JointState:
        message = JointState(name=self.names, position=output.positions.tolist(), velocity=output.velocities.tolist())
        message.header.stamp = ns_to_time(output.stamp_ns)
        return message

    def _publish_state(self) -> None:
        now = self._now()
        status = self.loop.status(now)
        status.update(self.heartbeat.figures())
        gate = self.gate.figures()
        status.update(gate, chunks_dropped=status["chunks_dropped"] + gate["gate_dropped"])  # newer ones took their place
        level = {"estop": Level.ERROR, "stale": Level.WARN, "waiting": Level.WARN,
                 # never heard from (starting up) is a warning; a policy that went silent an error
                 "policy_lost": Level.ERROR if status["policy_losses"] else Level.WARN}
        diagnostic = diagnostic_status("qwen_vla/controller", str(status["mode"]), status,
                                       level.get(str(status["mode"]), Level.OK), self.core.config.name)
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
