"""Controller node: the ROS shell around :class:`qwen_vla_ros.control.Controller`.

Executables ``aloha_controller``, ``widowx_controller`` and ``base_controller`` are this
node with a different default embodiment (Mobile ALOHA: ``aloha_controller`` with
``config:=aloha_mobile``).

The control loop runs on a thread of its own that sleeps to absolute deadlines on the
monotonic clock (:mod:`qwen_vla_ros.control.pacing`); under ``use_sim_time`` it is a ROS
timer instead, so it follows ``/clock``. The thread runs at ``control.realtime_priority``
(SCHED_FIFO) where the host allows it; the executor is rclpy's C++ EventsExecutor where
rclpy has one, so callbacks hold the GIL only while their Python runs; and Python's switch
interval is cut to 50 us so that the loop, woken at its deadline, gets the GIL soon
(docs/benchmarks.md, controller loop). Chunks are prepared (converted, interpolated, IK for
WidowX deltas: 8 ms p50 for a 4-action chunk) on a thread of their own, so that on the
single-threaded EventsExecutor a chunk never delays a Joy or joint-state callback. The core
is guarded by one lock that no slow work holds (chunk preparation happens outside it).

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

import math
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import Joy, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.control import ControlOutput, Controller
from qwen_vla_ros.control.arbitration import Transition
from qwen_vla_ros.control.pacing import Deadlines
from qwen_vla_ros.nodes.adapters import TwistAdapter, make_adapters
from qwen_vla_ros.nodes.common import (
    declare_configs,
    low_latency_spinner,
    ns_to_time,
    run_node,
    seconds_to_duration,
    time_to_ns,
    trajectory_to_chunk,
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


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


class ControllerNode(Node):
    def __init__(self, default_embodiment: str = "aloha") -> None:
        # What destroy_node needs exists before anything can fail: rclpy destroys a node whose
        # construction raised (a bad config) when the context shuts down.
        self.stopping = threading.Event()
        self.chunk_queue: queue.SimpleQueue[JointTrajectory | None] = queue.SimpleQueue()
        self.chunk_thread = threading.Thread(target=self._chunk_worker, name="chunks", daemon=True)
        self.loop_thread: threading.Thread | None = None
        super().__init__("qwen_vla_controller")
        embodiment, runtime = declare_configs(self, default_embodiment)
        state_rate = float(self.declare_parameter("state_rate_hz", 2.0).value)
        committed_rate = float(self.declare_parameter("committed_rate_hz", 50.0).value)
        self.core = Controller(embodiment, runtime)
        self.names = list(self.core.layout.names)
        self.lock = threading.Lock()
        adapters = make_adapters(self, self.core.layout, embodiment.outputs, self.core.period_s)
        self.base_adapters = [a for a in adapters if isinstance(a, TwistAdapter)]
        self.arm_adapters = [a for a in adapters if not isinstance(a, TwistAdapter)]

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
        self.create_subscription(JointTrajectory, CHUNK_TOPIC, self.chunk_queue.put, reliable, callback_group=inputs)
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

        publish_committed = committed_rate > 0 and embodiment.commands_are_actions
        self.committed_every = max(1, round(embodiment.control.rate_hz / committed_rate)) if publish_committed else 0
        if committed_rate > 0 and not publish_committed:
            self.get_logger().info(f"{embodiment.name}: no {COMMITTED_TOPIC}, its commands {self.names} are not its "
                                   "action channels (real-time chunking is off for it)")
        self.periods = 0
        self.chunk_thread.start()
        self.deadlines = Deadlines(self.core.period_ns, time.monotonic_ns())
        # Released by the Joy callback at a takeover; the loop sleeps on it instead of time.sleep.
        self.takeover = threading.Lock()
        self.takeover.acquire()
        if self.get_parameter("use_sim_time").value:
            self.create_timer(self.core.period_s, self._control_period, callback_group=MutuallyExclusiveCallbackGroup())
        else:
            self.loop_thread = threading.Thread(target=self._control_loop, name="control", daemon=True)
            self.loop_thread.start()
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

    def _chunk_worker(self) -> None:
        """Chunks in arrival order, off the executor; None (from destroy_node) ends it."""
        while (message := self.chunk_queue.get()) is not None:
            try:
                self._on_chunk(message)
            except Exception as exc:  # noqa: BLE001 - one bad chunk must not stop the chunks after it
                self.get_logger().error(f"chunk handling failed: {exc!r}", throttle_duration_sec=1.0)

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
            self._serve_takeover()
        for event in outcome.events:
            if event == "estop":
                self.estop_pub.publish(Bool(data=True))
                self.get_logger().error("e-stop button: e-stop engaged, holding until /qwen_vla/estop/reset is called")
            elif event in self.trial_clients:
                self._call_trial_service(event)
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

    def _call_trial_service(self, event: str) -> None:
        client = self.trial_clients[event]
        if not client.service_is_ready():
            self.get_logger().warning(f"{event} button: {client.srv_name} is not available (is trial_recorder running?)")
            return
        self.get_logger().info(f"{event} button: calling {client.srv_name}")
        client.call_async(Trigger.Request()).add_done_callback(partial(self._trial_answer, client.srv_name))

    def _trial_answer(self, service: str, future: Future) -> None:
        response = future.result()
        if response is None:
            self.get_logger().warning(f"{service} failed: {future.exception()}")
        elif response.success:
            self.get_logger().info(f"{service}: {response.message}")
        else:
            self.get_logger().warning(f"{service} refused: {response.message}")

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
    def _serve_takeover(self) -> None:
        """The operator's first command goes out now, not at the next period."""
        if self.loop_thread is None:  # sim time: the period runs here, on the simulated clock
            self._control_period(scheduled=False)
        else:
            self._wake_loop()

    def _wake_loop(self) -> None:
        try:
            self.takeover.release()
        except RuntimeError:
            pass  # already woken: one early period serves every takeover before it

    def _raise_priority(self) -> None:
        priority = self.core.config.control.realtime_priority
        if not priority:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # this thread only
        except OSError as exc:  # PermissionError without an rtprio limit
            self.get_logger().warning(
                f"control loop at normal priority: SCHED_FIFO {priority} refused ({exc}); allow it with an rtprio "
                "limit (/etc/security/limits.d) or CAP_SYS_NICE, or set control.realtime_priority: 0"
            )
        else:
            self.get_logger().info(f"control loop thread at SCHED_FIFO priority {priority}")

    def _control_loop(self) -> None:
        self._raise_priority()
        while not self.stopping.is_set() and self.context.ok():
            wait_ns = self.deadlines.wait_ns(time.monotonic_ns())
            scheduled = not (wait_ns and self.takeover.acquire(timeout=wait_ns / 1e9))
            if self.stopping.is_set():
                break
            if not scheduled:
                self.deadlines.restart(time.monotonic_ns())
            self.takeover.acquire(blocking=False)  # a takeover this period now serves is not served twice
            try:
                self._control_period(scheduled)
            except Exception as exc:  # noqa: BLE001 - a dead loop would leave the robot on its last command
                self.get_logger().error(f"control period failed: {exc!r}", throttle_duration_sec=1.0)

    def destroy_node(self) -> None:
        self.stopping.set()
        self.chunk_queue.put(None)
        if self.chunk_thread.is_alive():
            self.chunk_thread.join(timeout=1.0)
        if self.loop_thread is not None:
            self._wake_loop()  # so it sees the stop at once
            self.loop_thread.join(timeout=1.0)
        super().destroy_node()

    def _control_period(self, scheduled: bool = True) -> None:
        now = self._now()
        with self.lock:
            output = self.core.step(now, scheduled)
            transitions = self.core.take_transitions()
            publish_committed = output is not None and self.committed_every and self.periods % self.committed_every == 0
            committed = self.core.committed(now) if publish_committed else None
        self.periods += 1
        if transitions:
            self._publish_mode(transitions)
        if output is None:
            return
        for adapter in self.arm_adapters + (self.base_adapters if output.send_base else []):
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
        status.update(self.heartbeat.figures())
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
