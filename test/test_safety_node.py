"""The e-stop and the policy watchdog through the real controller node over real DDS (issue 19, §1, §2).

The controller runs as a child process on the ALOHA config with ``forward_command`` outputs.
This process stands in for the arm drivers, which cannot exist here (``ForwardCommandArms``:
joint states are the last command), and, in the e-stop tests, for the policy: chunks every
0.2 s and the policy heartbeat. The watchdog test runs the real policy_node (tiny checkpoint)
as a process and SIGKILLs it mid-motion. Times are judged from the command stamps on
``/qwen_vla/controller/command`` and numbers read from the shipped YAML itself.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from helpers.dds_robots import ForwardCommandArms  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Header, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros.chunk import ActionChunk  # noqa: E402
from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.nodes.common import time_to_ns  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory, image_to_msg  # noqa: E402
from qwen_vla_ros.paths import config_dir  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ALOHA_START = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
ALOHA_YAML = yaml.safe_load((config_dir() / "aloha.yaml").read_text())
PERIOD_NS = round(1e9 / ALOHA_YAML["control"]["rate_hz"])
FORWARD = "outputs=[{adapter: forward_command, arms: [left, right]}]"
CAMERA_OVERRIDES = [f"cameras.{i}.{key}={value}" for i in range(4) for key, value in (("width", 80), ("height", 60))]

PUBLISHERS = {
    "reliable_volatile": QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE),
    "best_effort_volatile": QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                                       durability=DurabilityPolicy.VOLATILE),
    "reliable_transient_local": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                           durability=DurabilityPolicy.TRANSIENT_LOCAL),
}


class Rig:
    """Arms, commands and diagnostics of one controller child; chunks and heartbeat while ``feeding``."""

    def __init__(self, ros_domain, name: str, feed_policy: bool = True) -> None:
        self.ros_domain = ros_domain
        self.config = load_embodiment("aloha")
        self.node = rclpy.create_node(name, context=ros_domain.context)
        self.executor = SingleThreadedExecutor(context=ros_domain.context)
        self.executor.add_node(self.node)
        self.arms = ForwardCommandArms(self.node, self.config.arms, ALOHA_START)
        self.commands: list[tuple[int, np.ndarray]] = []  # (stamp ns, positions)
        self.status: list[tuple[int, dict[str, str]]] = []  # (receive ns, key/values)
        self.node.create_subscription(JointState, "/qwen_vla/controller/command", lambda m: self.commands.append(
            (time_to_ns(m.header.stamp), np.array(m.position))), RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state", lambda m: self.status.extend(
            (self.now(), {v.key: v.value for v in s.values}) for s in m.status), 10)
        self.feeding = feed_policy
        self.chunks_sent = 0
        if feed_policy:
            self.chunk_pub = self.node.create_publisher(JointTrajectory, "/qwen_vla/action_chunk", RELIABLE)
            self.heartbeat = self.node.create_publisher(
                Header, "/qwen_vla/policy/heartbeat", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
            self.node.create_timer(0.2, self._chunk)
            self.node.create_timer(0.05, self._beat)
        self.child = None

    def now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _beat(self) -> None:
        if self.feeding:
            self.heartbeat.publish(Header(stamp=self.node.get_clock().now().to_msg(), frame_id="test/policy"))

    def _chunk(self) -> None:
        """Both waists swing at up to 0.3 rad/s: slower than the YAML acceleration (20 rad/s^2) can stop in one
        period (0.4 rad/s), so a stop shows as commands that no longer change."""
        if not self.feeding:
            return
        now = self.now()
        times = now / 1e9 + np.arange(50) * 0.02
        rows = np.tile(np.r_[ALOHA_START, 0.5, ALOHA_START, 0.5], (50, 1))
        rows[:, 0] += 0.3 * np.sin(times)
        rows[:, 7] -= 0.3 * np.sin(times)
        self.chunk_pub.publish(chunk_to_trajectory(ActionChunk(rows, tuple(self.config.action.names), 0.02, now)))
        self.chunks_sent += 1

    def start(self, *parameters: str) -> None:
        self.child = self.ros_domain.start_process(
            "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha", "-p", "state_rate_hz:=10.0",
            "-p", f"config_overrides:=['{FORWARD}']", *parameters)

    def spin(self, seconds: float) -> None:
        self.ros_domain.spin_until(self.executor, lambda: False, timeout=seconds)

    def wait_for_commands(self, count: int = 10) -> None:
        assert self.ros_domain.spin_until(self.executor, lambda: len(self.commands) > count or self.child.poll() is not None,
                                          timeout=120), "no commands"
        assert self.child.poll() is None, self.ros_domain.stop_process(self.child)

    def stop(self) -> str:
        output = self.ros_domain.stop_process(self.child) if self.child is not None else ""
        self.node.destroy_node()
        return output

    def last_change_ns(self, after_ns: int, until_ns: int | None = None) -> int | None:
        """Stamp of the last command in (``after_ns``, ``until_ns``] that differs from the one before it."""
        changes = [stamp for (stamp, value), (_, previous) in zip(self.commands[1:], self.commands[:-1])
                   if after_ns < stamp <= (until_ns or stamp) and not np.array_equal(value, previous)]
        return changes[-1] if changes else None

    def wait_until_heard(self, trial_event: str) -> int:
        """Index in ``status`` of the first report whose ``trial_event`` is this one: the controller's link to the
        recorder is its own pair of endpoints, discovered in its own time (seconds apart under load)."""
        assert self.ros_domain.spin_until(
            self.executor, lambda: bool(self.status) and self.status[-1][1].get("trial_event") == trial_event,
            timeout=30.0), f"the controller never heard '{trial_event}'"
        return len(self.status) - 1

    def figure(self, key: str, at_or_after_ns: int = 0) -> int:
        values = [int(s[key]) for t, s in self.status if t >= at_or_after_ns and key in s]
        assert values, f"no {key} in the controller's state after {at_or_after_ns}"
        return values[0]


@pytest.mark.parametrize("kind", sorted(PUBLISHERS))
def test_estop_true_stops_within_two_periods_whatever_the_publisher_qos_and_false_does_not_release(
        ros_domain, kind: str) -> None:
    rig = Rig(ros_domain, f"estop_{kind}")
    estop = rig.node.create_publisher(Bool, "/qwen_vla/estop", PUBLISHERS[kind])
    # Another message type on the topic can never stop the robot, and must be reported. FastDDS allows one type per
    # topic in a participant, so it comes from a second context (participant) in this process.
    other = rclpy.context.Context()
    rclpy.init(context=other, domain_id=ros_domain.domain_id)
    wrong_node = rclpy.create_node("wrong_type_estop", context=other)
    wrong_type = wrong_node.create_publisher(String, "/qwen_vla/estop", 10)
    rig.start()
    try:
        rig.wait_for_commands()
        rig.spin(2.5)  # the start-up ramp (1 s), then the chunks' swing
        before = rig.now()
        assert rig.last_change_ns(before - 300_000_000) is not None, "moving when the e-stop comes"
        pressed = rig.now()
        estop.publish(Bool(data=True))
        rig.spin(1.5)  # chunks keep arriving
        released = rig.now()
        estop.publish(Bool(data=False))  # must not release the latch
        wrong_type.publish(String(data="true"))
        rig.spin(2.5)
        sent = rig.chunks_sent
    finally:
        output = rig.stop()
        wrong_node.destroy_node()
        other.try_shutdown()
    last_change = rig.last_change_ns(pressed, until_ns=released)
    assert last_change is None or last_change <= pressed + 2 * PERIOD_NS, \
        f"commands still changed {(last_change - pressed) / 1e6:.1f} ms after the e-stop"
    after = [stamp for stamp, _ in rig.commands if stamp > pressed]
    assert len(after) > 0.6 * 4.0 / 0.02, "the controller keeps publishing its hold"
    assert rig.last_change_ns(released) is None, "false on the e-stop topic released the latch"
    # Chunks arrived all along; none taken in while stopped.
    assert sent > 30 and rig.figure("chunks_accepted", pressed + 200_000_000) == int(rig.status[-1][1]["chunks_accepted"])
    assert int(rig.status[-1][1]["rejected_estop"]) >= 15 and rig.status[-1][1]["mode"] == "estop"
    assert output.count("e-stop engaged") == 1, output
    assert "false on /qwen_vla/estop ignored" in output
    unreachable = [line for line in output.splitlines() if "sends std_msgs/msg/String" in line and "can NOT stop" in line]
    assert len(unreachable) >= 2 and all("ERROR" in line for line in unreachable), output[-3000:]
    assert "incompatible QoS" not in output, "the subscriptions that cannot match a publisher are expected, not warned"


def test_estop_latched_before_the_controller_started_stops_it_from_the_first_command(ros_domain) -> None:
    rig = Rig(ros_domain, "estop_latched_before")
    estop = rig.node.create_publisher(Bool, "/qwen_vla/estop", PUBLISHERS["reliable_transient_local"])
    estop.publish(Bool(data=True))
    rig.spin(0.5)
    rig.start()
    try:
        rig.wait_for_commands()
        rig.spin(3.0)  # chunks keep arriving
        # ... until the controller's chunk subscription (in its gate process) has matched the rig's
        # publisher and its once-a-second diagnostics count them: on a busy machine that can take
        # longer than the 3 s above, and a run in which no chunk reached the controller proves nothing.
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and not (rig.status and int(rig.status[-1][1]["rejected_estop"]) > 5):
            rig.spin(0.5)
        sent = rig.chunks_sent
    finally:
        output = rig.stop()
    first = rig.commands[0][1]
    assert all(np.array_equal(value, first) for _, value in rig.commands), "moved despite the latched e-stop"
    np.testing.assert_allclose(first[:6], ALOHA_START, atol=1e-9)
    assert sent > 10 and int(rig.status[-1][1]["chunks_accepted"]) == 0
    assert int(rig.status[-1][1]["rejected_estop"]) > 5
    assert "e-stop engaged" in output


class Cameras:
    """The four ALOHA cameras at 10 Hz, 80x60 (the policy node is told that size)."""

    def __init__(self, node, config) -> None:
        self.node = node
        rng = np.random.default_rng(0)
        self.frames = {c.name: rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for c in config.cameras}
        self.publishers = {c.name: node.create_publisher(Image, c.topic, 2) for c in config.cameras}
        node.create_timer(0.1, self.publish)

    def publish(self) -> None:
        now = self.node.get_clock().now().nanoseconds
        for name, publisher in self.publishers.items():
            publisher.publish(image_to_msg(self.frames[name], "rgb8", now, name))


def test_sigkilled_policy_node_stops_the_arms_long_before_its_chunk_ends(ros_domain, tiny_checkpoint) -> None:
    """The real policy_node (tiny checkpoint) drives; SIGKILL mid-motion; the arms brake to a hold within
    policy_timeout_s plus the braking time the YAML's limits allow, long before the last chunk would end."""
    rig = Rig(ros_domain, "policy_kill_rig", feed_policy=False)
    Cameras(rig.node, rig.config)
    chunks: list[tuple[int, int]] = []  # (received ns, end ns of its last action)
    rig.node.create_subscription(JointTrajectory, "/qwen_vla/action_chunk", lambda m: chunks.append(
        (rig.now(), time_to_ns(m.header.stamp) + round((len(m.points) - 1) * ALOHA_YAML["control"]["action_dt"] * 1e9))),
        RELIABLE)
    overrides = "[" + ", ".join(f"'{o}'" for o in [FORWARD, *CAMERA_OVERRIDES]) + "]"
    policy = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.policy_node", "--ros-args", "-p", "config:=aloha", "-p", f"checkpoint:={tiny_checkpoint}",
        "-p", f"config_overrides:={overrides}")
    rig.start()
    killed_ns = None
    try:
        rig.wait_for_commands()
        assert ros_domain.spin_until(rig.executor, lambda: len(chunks) >= 3 or policy.poll() is not None, timeout=240), \
            f"no chunks from the policy:\n{ros_domain.stop_process(policy)[-3000:]}"
        rig.spin(1.5)  # past the start-up ramp

        def fresh_chunk_moving() -> bool:
            now = rig.now()
            received, end = chunks[-1]
            return now - received < 60_000_000 and end - now > 700_000_000 and rig.last_change_ns(now - 60_000_000) is not None

        assert ros_domain.spin_until(rig.executor, fresh_chunk_moving, timeout=30), "no fresh chunk while moving"
        policy.send_signal(signal.SIGKILL)
        killed_ns = rig.now()
        chunk_end_ns = max(end for _, end in chunks)
        rig.spin(2.0)
    finally:
        if policy.poll() is None:
            policy.kill()
        policy.communicate(timeout=10)
        output = rig.stop()
    assert killed_ns is not None
    accepted = [(t, int(s["chunks_accepted"])) for t, s in rig.status if "chunks_accepted" in s]
    print(f"kill at 0; chunks received at {[(r - killed_ns) / 1e6 for r, _ in chunks[-4:]]} ms ending at "
          f"{[(e - killed_ns) / 1e6 for _, e in chunks[-4:]]} ms; last change "
          f"{((rig.last_change_ns(killed_ns) or killed_ns) - killed_ns) / 1e6} ms; accepted "
          f"{[(round((t - killed_ns) / 1e6), a) for t, a in accepted if abs(t - killed_ns) < 1e9]}; modes "
          f"{[(round((t - killed_ns) / 1e6), s['mode'], s['stale_events']) for t, s in rig.status if abs(t - killed_ns) < 1e9]}")
    assert rig.last_change_ns(killed_ns - 2 * PERIOD_NS) is not None, "moving at the kill"
    safety = ALOHA_YAML["safety"]
    limits = ALOHA_YAML["x-limits"]
    worst_braking_s = max(limits[j]["velocity"] / limits[j]["acceleration"] for j in ("waist", "shoulder", "elbow",
                                                                                    "forearm_roll", "wrist_angle",
                                                                                    "wrist_rotate", "gripper_normalized"))
    bound_ns = killed_ns + round((safety["policy_timeout_s"] + worst_braking_s) * 1e9) + 3 * PERIOD_NS
    last_change = rig.last_change_ns(killed_ns)
    assert last_change is not None and last_change <= bound_ns, \
        f"still moving {(last_change - killed_ns) / 1e6:.0f} ms after the kill"
    assert chunk_end_ns - last_change > 200_000_000, \
        f"stopped {(last_change - killed_ns) / 1e6:.0f} ms after the kill, the chunk ran to {(chunk_end_ns - killed_ns) / 1e6:.0f} ms"
    assert "policy lost: no heartbeat for" in output, output[-3000:]
    assert rig.status[-1][1]["mode"] == "policy_lost" and int(rig.status[-1][1]["policy_losses"]) == 1
    print(f"stopped {(last_change - killed_ns) / 1e6:.0f} ms after SIGKILL; the last chunk would have run "
          f"{(chunk_end_ns - killed_ns) / 1e6:.0f} ms; {math.ceil((last_change - killed_ns) / PERIOD_NS)} periods; "
          f"load {os.getloadavg()[0]:.2f}")


def test_policy_heartbeat_beats_from_its_own_thread_while_the_node_is_busy(ros_domain) -> None:
    """The policy node's heartbeat needs neither its executor nor its inference thread: here the node is
    never spun and this thread computes in pure Python (holding the GIL as much as Python lets it) for
    1.5 s, as a long inference would; the beats keep their period."""
    from qwen_vla_ros.nodes.heartbeat import PolicyHeartbeat

    timeout_s = ALOHA_YAML["safety"]["policy_timeout_s"]
    policy_node = rclpy.create_node("busy_policy", context=ros_domain.context)
    listener = rclpy.create_node("watchdog_listener", context=ros_domain.context)
    sent_stamps: list[int] = []  # header stamps: when the heartbeat thread published
    listener.create_subscription(Header, "/qwen_vla/policy/heartbeat", lambda m: sent_stamps.append(time_to_ns(m.stamp)),
                                 QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(listener)  # the policy node is in no executor at all
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    heartbeat = PolicyHeartbeat(policy_node, timeout_s)
    try:
        deadline = time.monotonic() + 10
        while not sent_stamps and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sent_stamps, "no heartbeat"
        start = time.time_ns()
        total = 0
        while time.time_ns() - start < 1_500_000_000:  # a "long inference" in pure Python
            total += sum(i * i for i in range(1000))
        end = time.time_ns()
        time.sleep(0.5)  # the beats sent during it arrive
    finally:
        heartbeat.stop()
        executor.shutdown()
        spinner.join(timeout=5)
        policy_node.destroy_node()
        listener.destroy_node()
    during = [t for t in sent_stamps if start <= t <= end]
    gaps_s = np.diff([start, *during, end]) / 1e9
    # The beats' own stamps (when the heartbeat thread sent them): no gap the watchdog would take for a lost policy.
    assert gaps_s.max() < timeout_s, f"heartbeat gap {gaps_s.max():.3f} s during the busy period ({len(during)} beats)"


def test_a_policy_heartbeat_that_fails_while_its_node_lives_is_logged(ros_domain, capfd) -> None:
    """The beats end either way (and the controller then holds, policy lost); only the shutdown ends
    them quietly. A publisher that fails while the context is up is a fault, and the log names it."""
    from qwen_vla_ros.nodes.heartbeat import PolicyHeartbeat

    node = rclpy.create_node("failing_policy", context=ros_domain.context)
    heartbeat = PolicyHeartbeat(node, ALOHA_YAML["safety"]["policy_timeout_s"])
    try:
        node.destroy_publisher(heartbeat.publisher)  # the next beat's publish fails
        heartbeat.thread.join(timeout=10)
        assert not heartbeat.thread.is_alive()
    finally:
        heartbeat.stop()
        node.destroy_node()
    err = capfd.readouterr().err
    assert "policy heartbeat stopped" in err and "Traceback" in err, err[-2000:]



class RecorderLink:
    """The real trial_recorder as a child process, its trial services and its announcements (contract.TRIAL_EVENT)."""

    def __init__(self, rig: Rig, output_dir) -> None:
        self.rig = rig
        self.events: list[tuple[int, dict]] = []  # (receive ns, announcement)
        rig.node.create_subscription(String, "/qwen_vla/trial/event",
                                     lambda m: self.events.append((rig.now(), json.loads(m.data))), RELIABLE)
        self.clients = {name: rig.node.create_client(Trigger, f"/qwen_vla/trial/{name}")
                        for name in ("start", "stop_failure")}
        self.child = rig.ros_domain.start_process(
            "-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p", f"output_dir:={output_dir}",
            "-p", "topics:=['/test/nothing']")

    def call(self, name: str, change: str, controller: bool = True) -> int:
        """Call the recorder's service; the receive time of the announcement it makes (once the controller's
        state says it heard it too, unless ``controller`` is False: none is running)."""
        seen = len(self.events)
        assert self.clients[name].wait_for_service(timeout_sec=30.0), f"no /qwen_vla/trial/{name}"
        future = self.clients[name].call_async(Trigger.Request())
        assert self.rig.ros_domain.spin_until(self.rig.executor, lambda: future.done() and len(self.events) > seen,
                                              timeout=30.0)
        assert future.result().success, future.result().message
        assert self.events[-1][1]["change"] == change, self.events[-1]
        received = self.events[-1][0]
        if not controller:
            return received
        self.rig.wait_until_heard(f"{change} {self.events[-1][1]['trial']}")  # the next step starts once it has
        return received

    def stop(self) -> str:
        return self.rig.ros_domain.stop_process(self.child)


def test_a_trial_ended_through_the_recorders_service_holds_the_arms_until_the_next_trial_starts(
        ros_domain, tmp_path) -> None:
    """Whoever ends a trial (here a plain service call, as an evaluation script or an operator's UI makes it,
    not the joystick), the real trial_recorder announces it and the controller holds: commands stop changing
    within 2 control periods of the announcement while chunks keep arriving, and those chunks are refused as
    inactive. The next trial's start gives the policy the arms back."""
    rig = Rig(ros_domain, "trial_hold")
    recorder = RecorderLink(rig, tmp_path / "trials")
    rig.start()
    try:
        rig.wait_for_commands()
        rig.spin(2.5)  # the start-up ramp (1 s), then the chunks' swing
        recorder.call("start", "started")
        rig.spin(1.0)
        assert rig.last_change_ns(rig.now() - 300_000_000) is not None, "moving when the trial ends"
        ended = recorder.call("stop_failure", "ended")
        rig.spin(2.0)  # chunks keep arriving
        restarted = recorder.call("start", "started")
        rig.spin(2.0)
    finally:
        output = rig.stop()
        recorder_output = recorder.stop()
    last_change = rig.last_change_ns(ended - 500_000_000, until_ns=restarted)
    assert last_change is not None and last_change <= ended + 2 * PERIOD_NS, \
        f"commands still changed {(last_change - ended) / 1e6:.1f} ms after the trial ended"
    assert rig.last_change_ns(restarted) is not None, "the next trial's start gave the policy the arms back"
    held = [s for t, s in rig.status if ended + 500_000_000 < t < restarted]
    assert held and all(s["control_mode"] == "hold" for s in held), held
    assert int(held[-1]["rejected_inactive"]) >= 5, "chunks kept arriving and were refused while the arms held"
    assert "ended" in output and "-> hold" in output, output[-3000:]
    assert recorder.events[1][1]["outcome"] == "failure", (recorder.events, recorder_output[-2000:])


def test_a_controller_started_after_a_trial_ended_holds_the_arms(ros_domain, tmp_path) -> None:
    """The recorder's announcement is latched: a controller that starts (or restarts) after a trial ended learns it
    and holds while the policy's chunks arrive, and the next trial's start gives the policy the arms."""
    rig = Rig(ros_domain, "late_controller")
    recorder = RecorderLink(rig, tmp_path / "trials")
    recorder.call("start", "started", controller=False)
    recorder.call("stop_failure", "ended", controller=False)  # before any controller exists
    rig.start()
    try:
        rig.wait_for_commands()
        first_heard = rig.wait_until_heard("ended trial_0001")  # may come after its first state reports
        heard = rig.status[first_heard][0]
        # The policy's chunks reach the controller's chunk gate (a process of its own) once it has discovered them.
        assert ros_domain.spin_until(rig.executor, lambda: int(rig.status[-1][1]["rejected_inactive"]) >= 5,
                                     timeout=30.0), "chunks kept arriving and were refused while the arms held"
        held = [s for _, s in rig.status[first_heard:]]
        restarted = recorder.call("start", "started")
        rig.spin(2.0)
    finally:
        output = rig.stop()
        recorder.stop()
    assert held and all(s["trial_event"] == "ended trial_0001" and s["control_mode"] == "hold" for s in held), held
    assert rig.last_change_ns(heard, until_ns=restarted) is None, "the arms moved before the next trial started"
    assert rig.last_change_ns(restarted) is not None, "the next trial's start gave the policy the arms"
    assert "trial_0001 ended" in output, output[-3000:]


def test_between_trials_the_start_pose_is_reached_and_held_until_the_next_trial_starts(ros_domain, tmp_path) -> None:
    """After a trial ended, move_to_start takes the arms to the YAML's start pose (joints and grippers) and they
    stay there, although the policy's chunks keep arriving, until the recorder starts the next trial."""
    pose = ALOHA_YAML["start_pose"]
    rig = Rig(ros_domain, "start_between_trials")
    recorder = RecorderLink(rig, tmp_path / "trials")
    outcomes: list[dict] = []
    rig.node.create_subscription(String, "/qwen_vla/controller/start_pose", lambda m: outcomes.append(
        json.loads(m.data)), PUBLISHERS["reliable_transient_local"])
    move = rig.node.create_client(Trigger, "/qwen_vla/controller/move_to_start")
    channel_names: list[str] = []  # of the command message, whose order is the controller's
    rig.node.create_subscription(JointState, "/qwen_vla/controller/command",
                                 lambda m: channel_names[:] or channel_names.extend(m.name), RELIABLE)
    rig.start()
    try:
        rig.wait_for_commands()
        recorder.call("start", "started")
        rig.spin(2.5)  # the swing takes the waists away from the pose
        recorder.call("stop_failure", "ended")
        assert move.wait_for_service(timeout_sec=10.0)
        future = move.call_async(Trigger.Request())
        assert ros_domain.spin_until(rig.executor, lambda: future.done() and bool(outcomes),
                                     timeout=pose["timeout_s"] + 10.0)
        arrived_ns = rig.now()
        rig.spin(2.0)  # chunks keep arriving
        restarted = recorder.call("start", "started")
        rig.spin(1.5)
    finally:
        output = rig.stop()
        recorder.stop()
    assert future.result().success, (future.result().message, output[-2000:])
    assert outcomes[-1]["arrived"] and outcomes[-1]["pose"] == pose["joints"], outcomes[-1]
    waiting = [value for stamp, value in rig.commands if arrived_ns + 2 * PERIOD_NS < stamp <= restarted]
    assert len(waiting) > 50 and all(np.array_equal(value, waiting[0]) for value in waiting), "left the pose"
    names = channel_names
    for arm in ("left", "right"):
        joints = [names.index(f"{arm}_{joint}") for joint in
                  ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")]
        np.testing.assert_allclose(waiting[0][joints], pose["joints"][arm], atol=pose["tolerance_rad"])
        assert waiting[0][names.index(f"{arm}_gripper")] == pytest.approx(pose["grippers"][arm])
    assert rig.last_change_ns(restarted) is not None, "the trial's start gave the policy the arms"
