"""Controller nodes over real DDS: chunks and joint states in, commands out, at rate and within limits.

The controller runs as a child process (``python -m qwen_vla_ros.nodes.controller``). The
test process stands in for the drivers, since the motors cannot exist here: a follower arm
publishes joint states equal to the last Interbotix command it received (real
``interbotix_xs_msgs`` types), and a base integrates the Twist it receives into odometry.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from helpers.dds_robots import ForwardCommandArms, PolicyPulse, TwistBase  # noqa: E402
from helpers.limits import judged_limits  # noqa: E402
from helpers.robots import rate_limit_violations  # noqa: E402
from helpers.xs_sdk import XsSdkArm  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState, TimeReference  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros.chunk import ActionChunk  # noqa: E402
from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.control.layout import CommandLayout  # noqa: E402
from qwen_vla_ros.embodiments.gripper import joint_to_normalized  # noqa: E402
from qwen_vla_ros.nodes.common import ns_to_time, time_to_ns  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
FORWARD_COMMAND = "outputs=[{adapter: forward_command, arms: [left, right]}]"
ALOHA_START = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def start_controller(ros_domain, embodiment: str, env: dict[str, str] | None = None):
    return ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", f"config:={embodiment}", env=env)


def fifo_allowed(priority: int) -> bool:
    """Whether this host lets a process give one of its threads SCHED_FIFO (root, CAP_SYS_NICE or an rtprio limit)."""
    allowed: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except OSError:
            allowed.append(False)
        else:
            allowed.append(True)

    thread = threading.Thread(target=probe)  # a throwaway thread: the test's own stay as they are
    thread.start()
    thread.join()
    return allowed[0]


def controller_mode(states: list[DiagnosticArray]) -> str | None:
    """The mode in the controller's latest state report, if one came."""
    if not states:
        return None
    return next((kv.value for kv in states[-1].status[0].values if kv.key == "mode"), None)


def spin_for(ros_domain, executor, seconds: float) -> None:
    ros_domain.spin_until(executor, lambda: False, timeout=seconds)


def test_aloha_controller_over_dds(ros_domain, interbotix_msgs) -> None:
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

    config = load_embodiment("aloha")
    layout = CommandLayout(config)
    node = rclpy.create_node("aloha_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)

    # The follower arms: joint states are the last commanded joints and gripper.
    arms = {arm.name: {"joints": list(ALOHA_START), "gripper_angle": 1.0, "config": arm} for arm in config.arms}
    groups, singles = [], []

    def on_group(arm, message):
        groups.append((arm, message))
        arms[arm]["joints"] = list(message.cmd)

    def on_single(arm, message):
        singles.append((arm, message))
        arms[arm]["gripper_angle"] = message.cmd

    state_publishers = {}
    for arm in config.arms:
        node.create_subscription(JointGroupCommand, f"/{arm.namespace}/commands/joint_group",
                                 lambda m, a=arm.name: on_group(a, m), RELIABLE)
        node.create_subscription(JointSingleCommand, f"/{arm.namespace}/commands/joint_single",
                                 lambda m, a=arm.name: on_single(a, m), RELIABLE)
        state_publishers[arm.name] = node.create_publisher(JointState, arm.joint_state_topic, 10)
        XsSdkArm(node, arm.namespace, services_only=True)  # the driver's services, for the controller's preflight

    def publish_joint_states():
        for name, arm in arms.items():
            gripper = arm["config"].gripper
            opening = joint_to_normalized(arm["gripper_angle"], gripper)
            finger = gripper.finger_close + opening * (gripper.finger_open - gripper.finger_close)
            message = JointState(name=[*arm["config"].joint_names, "gripper", "left_finger", "right_finger"],
                                 position=[*arm["joints"], arm["gripper_angle"], finger, -finger])
            message.header.stamp = node.get_clock().now().to_msg()
            state_publishers[name].publish(message)

    node.create_timer(0.02, publish_joint_states)

    commands: list[JointState] = []
    committed: list[JointTrajectory] = []
    states: list[DiagnosticArray] = []
    node.create_subscription(JointState, "/qwen_vla/controller/command", commands.append, RELIABLE)
    node.create_subscription(JointTrajectory, "/qwen_vla/controller/committed", committed.append, RELIABLE)
    node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state", states.append, 10)
    chunk_publisher = node.create_publisher(JointTrajectory, "/qwen_vla/action_chunk", RELIABLE)
    PolicyPulse(node)

    sending = {"on": True, "count": 0}

    def publish_chunk():
        if not sending["on"]:
            return
        now = node.get_clock().now().nanoseconds
        times = now / 1e9 + np.arange(50) * 0.02
        rows = np.tile(np.r_[ALOHA_START, 0.5, ALOHA_START, 0.5], (50, 1))
        rows[:, 0] += 0.4 * np.sin(times)
        rows[:, 6] = 0.5 + 0.5 * np.sin(3 * times)
        rows[:, 8] = -0.96 + 0.3 * np.sin(2 * times)
        if sending["count"] % 3 == 1:
            rows[10:20, 9] = 50.0  # far beyond the elbow limit: clamped, never executed
        sending["count"] += 1
        chunk = ActionChunk(rows, tuple(config.action.names), 0.02, now - 30_000_000)
        chunk_publisher.publish(chunk_to_trajectory(chunk))

    node.create_timer(0.2, publish_chunk)
    child = start_controller(ros_domain, "aloha", env=interbotix_msgs.environment(ros_domain.env))
    try:
        # Measure from the controller's first "running" on: its heartbeat subscription may match seconds after
        # its command publisher does (discovery of each pair of endpoints takes its own time under load).
        assert ros_domain.spin_until(executor, lambda: controller_mode(states) == "running" or child.poll() is not None,
                                     timeout=30)
        assert child.poll() is None, ros_domain.stop_process(child)
        spin_for(ros_domain, executor, 3.0)
        running = len(commands)
        sending["on"] = False
        spin_for(ros_domain, executor, 2.5)
    finally:
        output = ros_domain.stop_process(child)
        node.destroy_node()

    assert "Traceback" not in output, output  # SIGTERM shuts down cleanly
    positions = np.array([m.position for m in commands])
    stamps_ns = np.array([time_to_ns(m.header.stamp) for m in commands])
    stamps = stamps_ns / 1e9
    assert list(commands[0].name) == list(layout.names)
    # Rate: 50 Hz on average, consecutive periods (no message lost on a reliable topic).
    intervals = np.diff(stamps)
    assert np.median(intervals) == pytest.approx(0.02, abs=0.004), output
    assert abs((stamps[-1] - stamps[0]) / (len(stamps) - 1) - 0.02) < 0.004
    # Limits: inside the position bounds, velocity and acceleration within limits over each period's real length.
    # Judged against the YAML file, the URDF and the reviewed envelope, not the layout's limits.
    limits = judged_limits("aloha", layout.names)
    assert np.all(positions >= limits.lower) and np.all(positions <= limits.upper)
    too_fast, too_sharp = rate_limit_violations(limits, positions, stamps_ns, 0.02)
    assert not too_fast.any() and not too_sharp.any(), (np.argwhere(too_fast)[:5], np.argwhere(too_sharp)[:5])
    moved = positions[:running].max(axis=0) - positions[:running].min(axis=0)
    assert moved[0] > 0.2 and moved[6] > 0.3 and moved[8] > 0.1, f"followed the chunks: moved {moved}\n{output}"
    # Hold after the chunks stop: still publishing, and constant.
    tail = positions[-40:]
    np.testing.assert_allclose(tail, np.repeat(tail[:1], len(tail), axis=0), atol=1e-12)
    assert len(commands) - running > 0.6 * 2.5 / 0.02
    status = {kv.key: kv.value for kv in states[-1].status[0].values}
    assert status["mode"] == "holding" and status["active_source"] == "policy"
    for key in ("chunk_age_s", "skipped_actions", "clamped_actions", "chunks_rejected", "period_error_ms_p99"):
        assert key in status
    assert int(status["skipped_actions"]) > 0 and int(status["clamped_actions"]) > 0
    # The Interbotix commands carry the same values in driver units.
    left = layout.arms[0]
    last_group = [m for arm, m in groups if arm == "left"][-1]
    last_single = [m for arm, m in singles if arm == "left"][-1]
    assert last_group.name == "arm" and last_single.name == "gripper"
    np.testing.assert_allclose(last_group.cmd, positions[-1][left.joint_index], atol=1e-6)
    gripper = left.gripper
    assert last_single.cmd == pytest.approx(gripper.joint_close + positions[-1][left.gripper_index]
                                            * (gripper.joint_open - gripper.joint_close), abs=1e-6)
    # Committed actions: the next committed_steps periods, stamped, one period apart.
    last = committed[-1]
    assert len(last.points) == config.control.committed_steps and list(last.joint_names) == list(layout.names)
    assert last.points[1].time_from_start.nanosec - last.points[0].time_from_start.nanosec == 20_000_000


def test_base_controller_twist_estop_and_reset_over_dds(ros_domain) -> None:
    """A waypoint base drives, stops on e-stop within a period or two, ignores chunks until reset;
    a policy host whose heartbeat clock runs 200 ms behind is reported on the controller's state."""
    config = load_embodiment("mobile_base")
    node = rclpy.create_node("base_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    heartbeat = node.create_publisher(TimeReference, "/qwen_vla/heartbeat", 10)
    slow_peer = "remote-gpu-host/slow_policy_host"  # another host: one on this host shares its clock

    def beat() -> None:
        message = TimeReference(source=slow_peer)
        message.header.stamp = ns_to_time(node.get_clock().now().nanoseconds - 200_000_000)
        heartbeat.publish(message)

    node.create_timer(0.2, beat)
    states: dict[str, str] = {}
    node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state",
                             lambda m: states.update({v.key: v.value for s in m.status for v in s.values}), 10)
    committed: list[JointTrajectory] = []
    node.create_subscription(JointTrajectory, "/qwen_vla/controller/committed", committed.append, RELIABLE)
    base = TwistBase(node, "/mobile_base/cmd_vel", config.base.odom_topic)
    twists = base.twists
    chunk_publisher = node.create_publisher(JointTrajectory, "/qwen_vla/action_chunk", RELIABLE)
    PolicyPulse(node)

    def send_chunk():
        now = node.get_clock().now().nanoseconds
        rows = np.stack([0.1 * np.arange(8), np.zeros(8), np.zeros(8)], axis=1)  # 0.4 m/s straight ahead
        chunk_publisher.publish(chunk_to_trajectory(ActionChunk(rows, tuple(config.action.names), 0.25, now)))

    estop = node.create_publisher(
        Bool, "/qwen_vla/estop", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                            durability=DurabilityPolicy.TRANSIENT_LOCAL))
    reset = node.create_client(Trigger, "/qwen_vla/estop/reset")
    child = start_controller(ros_domain, "mobile_base")
    try:
        # Chunks only once the controller hears the heartbeat and the chunk topic is matched: each pair of
        # endpoints is discovered in its own time, seconds apart under load.
        assert ros_domain.spin_until(
            executor, lambda: (len(twists) > 5 and chunk_publisher.get_subscription_count() > 0
                               and float(states.get("policy_heartbeat_age_s", "inf")) < config.safety.policy_timeout_s)
            or child.poll() is not None, timeout=30)
        fifo_threads = sum(os.sched_getscheduler(int(task.name)) == os.SCHED_FIFO
                           for task in Path(f"/proc/{child.pid}/task").iterdir())
        for _ in range(5):
            send_chunk()
            spin_for(ros_domain, executor, 0.4)
        assert max(t.linear.x for _, t in twists[-20:]) > 0.2, "drove along the waypoints"
        estop.publish(Bool(data=True))
        pressed = time.monotonic()
        spin_for(ros_domain, executor, 0.5)
        send_chunk()  # ignored while latched
        spin_for(ros_domain, executor, 1.0)
        after = [(t, m) for t, m in twists if t > pressed]
        first_zero = next(i for i, (_, m) in enumerate(after) if m.linear.x == 0.0 and m.angular.z == 0.0)
        assert first_zero <= 3, "zero twist within a couple of periods of the e-stop"
        assert all(m.linear.x == 0.0 and m.angular.z == 0.0 for _, m in after[first_zero:])
        assert reset.wait_for_service(timeout_sec=5.0)
        future = reset.call_async(Trigger.Request())
        assert ros_domain.spin_until(executor, future.done, timeout=5.0) and future.result().success
        x_before = base.x
        for _ in range(4):
            send_chunk()
            spin_for(ros_domain, executor, 0.4)
        assert base.x > x_before + 0.05, "moves again after the reset"
        spin_for(ros_domain, executor, 3.0)  # chunks stopped: the base holds at zero
        assert all(m.linear.x == 0.0 and m.angular.z == 0.0 for _, m in twists[-20:])
    finally:
        output = ros_domain.stop_process(child)
        node.destroy_node()
    assert "e-stop engaged" in output
    # The loop thread runs at control.realtime_priority where this host allows SCHED_FIFO, and says so where it does not.
    priority = config.control.realtime_priority
    assert priority > 0
    if fifo_allowed(priority):
        assert fifo_threads == 1 and f"control loop thread at SCHED_FIFO priority {priority}" in output
    else:
        assert fifo_threads == 0 and "control loop at normal priority: SCHED_FIFO" in output
    assert committed == [] and "no /qwen_vla/controller/committed" in output, \
        "a waypoint base commands a Twist: no committed actions to hand the policy"
    offset = float(states[f"clock_offset_ms.{slow_peer}"])
    assert 195 < offset < 400, states
    assert "clock offset over 10 ms" in output and slow_peer in output


def test_interbotix_adapter_refuses_to_start_without_its_messages(ros_domain) -> None:
    """In an environment where interbotix_xs_msgs is not importable, the node exits 2 and says what to install."""
    env = dict(ros_domain.env)
    for key in ("PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH"):
        env[key] = ":".join(p for p in env.get(key, "").split(":") if "interbotix" not in p)
    env["PYTHONPATH"] = ":".join(filter(None, [str(Path(__file__).resolve().parent.parent), env["PYTHONPATH"]]))
    probe = subprocess.run([sys.executable, "-c", "import interbotix_xs_msgs"], env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("interbotix_xs_msgs is installed in this environment, so the refusal cannot be shown here")
    child = start_controller(ros_domain, "aloha", env=env)
    output = child.communicate(timeout=60)[0]
    if child.returncode == 0 or "interbotix_xs_msgs" not in output:
        pytest.fail(f"expected a refusal, got exit {child.returncode}:\n{output}")
    assert child.returncode == 2
    assert "qwen-vla-ros build-interfaces" in output and "interbotix_ros_core" in output


def test_a_bad_config_exits_2_with_its_message_and_no_error_while_tearing_down(ros_domain) -> None:
    """``control.rate_hz: 1e10`` is a positive number, but its period rounds to 0 ns: refused at start-up
    with exit 2 and the field, and the half-built node is torn down without a second error."""
    child = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
        "-p", 'config_overrides:=["control.rate_hz=1e10", "outputs=[{adapter: forward_command, arms: [left, right]}]"]',
    )
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 2, output
    assert "rate_hz" in output, output
    assert "Traceback" not in output and "AttributeError" not in output, output


def test_chunk_floods_and_oversized_chunks_from_another_process_neither_starve_the_loop_nor_get_decoded(ros_domain) -> None:
    """The abuser of bench/chunk_abuse.py, in a process of its own: 1000 valid chunks/s, then 1000
    NaN chunks/s, then two 100k-point (15 MB) chunks. The controller keeps commanding through the
    floods, thins them to their newest chunks (counted as dropped), and refuses the oversized ones
    by their size (counted as too_large). The hard timing figure is the benchmark's
    (docs/benchmarks.md, chunk abuse); here a gap of 10 periods, far above the 3-period goal and far
    below the 0.8 s such a flood opened when every chunk was decoded, marks a starved loop."""
    config = load_embodiment("aloha")
    node = rclpy.create_node("abuse_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    ForwardCommandArms(node, config.arms, ALOHA_START)
    PolicyPulse(node)  # the policy is alive (as policy_node's heartbeat thread says): chunks may drive
    stamps: list[int] = []
    states: dict[str, str] = {}
    node.create_subscription(JointState, "/qwen_vla/controller/command",
                             lambda m: stamps.append(time_to_ns(m.header.stamp)), RELIABLE)
    node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state",
                             lambda m: states.update({v.key: v.value for s in m.status for v in s.values}), 10)
    child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
                                     "-p", f'config_overrides:=["{FORWARD_COMMAND}"]')
    abuser = None
    try:
        assert ros_domain.spin_until(executor, lambda: len(stamps) > 10 or child.poll() is not None, timeout=30)
        assert child.poll() is None, ros_domain.stop_process(child)
        abuser = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "chunk_abuse.py"), "--abuse", "--domain", str(ros_domain.domain_id),
             "--flood-s", "2", "--rate", "1000", "--large", "2"],
            env=ros_domain.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert ros_domain.spin_until(executor, lambda: abuser.poll() is not None, timeout=120)
        phases = {p["phase"]: p for p in (json.loads(line) for line in abuser.stdout.read().splitlines() if line.startswith("{"))}
        spin_for(ros_domain, executor, 2.0)  # commands go on after the abuse; the state report catches up
    finally:
        if abuser is not None and abuser.poll() is None:
            abuser.kill()
        output = ros_domain.stop_process(child)
        node.destroy_node()

    assert set(phases) == {"flood", "nan_flood", "large"}, phases
    assert phases["flood"]["sent"] > 1000 and phases["nan_flood"]["sent"] > 1000, phases
    commands = np.array(stamps, dtype=np.int64)
    during_floods = commands[(commands >= phases["flood"]["start_ns"]) & (commands <= phases["nan_flood"]["end_ns"])]
    gaps_ms = np.diff(during_floods) / 1e6
    assert len(during_floods) > 0.5 * (phases["nan_flood"]["end_ns"] - phases["flood"]["start_ns"]) / 20e6
    assert gaps_ms.max() < 200.0, f"the loop starved: gaps over 60 ms {sorted(gaps_ms[gaps_ms > 60])}"
    assert commands[-1] > phases["large"]["end_ns"], "still commanding after the oversized chunks"
    assert int(states["rejected_too_large"]) == 2, states
    assert int(states["rejected_non_finite"]) > 0 and int(states["chunks_dropped"]) > 1000, states
    assert "Traceback" not in output, output


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, waiting for whoever adopted it to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_15_mb_chunks_from_another_process_do_not_stall_the_loop_and_the_gate_ends_with_the_controller(ros_domain) -> None:
    """The abuser of bench/chunk_abuse.py sends four 100k-point (15 MB) chunks, 0.25 s apart. Receiving
    one took 0.13 to 0.46 s of rclpy holding the controller's GIL when the controller subscribed itself,
    which stalled its loop 0.47 to 0.57 s (docs/benchmarks.md, chunk abuse); the chunk gate receives
    them in its own process. Two bounds: 200 ms (10 periods), far below that stall and above the
    gaps this shared, loaded VM opens with no chunk at all (up to about 100 ms); and no more than
    two periods over the longest gap of the 3 s just before, without abuse (the code before the
    gate: 45 ms over at a load of 6, 60 to 230 ms over in the benchmark). The 60 ms goal is the
    benchmark's. The chunks are refused by size and counted, and the gate ends with the controller."""
    config = load_embodiment("aloha")
    node = rclpy.create_node("large_chunk_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    ForwardCommandArms(node, config.arms, ALOHA_START)
    PolicyPulse(node)  # the policy is alive (as policy_node's heartbeat thread says): chunks may drive
    stamps: list[int] = []
    states: dict[str, str] = {}
    node.create_subscription(JointState, "/qwen_vla/controller/command",
                             lambda m: stamps.append(time_to_ns(m.header.stamp)), RELIABLE)
    node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state",
                             lambda m: states.update({v.key: v.value for s in m.status for v in s.values}), 10)
    child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
                                     "-p", f'config_overrides:=["{FORWARD_COMMAND}"]')
    abuser = None
    try:
        assert ros_domain.spin_until(executor, lambda: int(states.get("gate_pid", 0)) > 0 or child.poll() is not None,
                                     timeout=60)
        gate_pid = int(states["gate_pid"])
        quiet_start = time.time_ns()
        spin_for(ros_domain, executor, 3.0)  # the loop's gaps on this machine, now, without abuse
        quiet_end = time.time_ns()
        abuser = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "chunk_abuse.py"), "--abuse", "--domain", str(ros_domain.domain_id),
             "--flood-s", "0", "--large", "4"],
            env=ros_domain.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert ros_domain.spin_until(executor, lambda: abuser.poll() is not None, timeout=120)
        phases = {p["phase"]: p for p in (json.loads(line) for line in abuser.stdout.read().splitlines() if line.startswith("{"))}
        spin_for(ros_domain, executor, 1.5)  # the state report catches up
    finally:
        if abuser is not None and abuser.poll() is None:
            abuser.kill()
        output = ros_domain.stop_process(child)
        node.destroy_node()

    large = phases["large"]
    assert large["sent"] == 4 and large["bytes_each"] > 15_000_000, phases
    commands = np.array(stamps, dtype=np.int64)
    around = commands[(commands >= large["start_ns"] - 200_000_000) & (commands <= large["end_ns"])]
    gaps_ms = np.diff(around) / 1e6
    assert len(around) > 0.5 * (large["end_ns"] - large["start_ns"]) / 20e6
    quiet_gap_ms = np.diff(commands[(commands >= quiet_start) & (commands <= quiet_end)]).max() / 1e6
    assert gaps_ms.max() < 200.0, f"a 15 MB chunk stalled the loop: gaps over 60 ms {sorted(gaps_ms[gaps_ms > 60])}"
    assert gaps_ms.max() < quiet_gap_ms + 40.0, f"longest gap {gaps_ms.max():.1f} ms, {quiet_gap_ms:.1f} ms without abuse"
    assert int(states["gate_too_large"]) == 4 and int(states["rejected_too_large"]) == 4, states
    assert int(states["gate_failures"]) == 0, states
    assert "Traceback" not in output, output
    deadline = time.monotonic() + 5.0
    while not process_gone(gate_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(gate_pid), "the chunk gate outlived the controller"


def test_a_killed_gate_is_reported_and_restarted_no_chunk_sent_while_it_was_down_moves_the_arm(ros_domain) -> None:
    """SIGKILL the chunk gate mid-run: the controller logs it at ERROR, counts it, keeps commanding
    (holding where its last plan ended), starts a new gate, and moves again on the next chunk. A chunk
    published while the gate was down never moves the arm, not even after the new gate subscribes
    (the topic is volatile: a new subscription gets no old messages). Then SIGKILL the controller
    itself: the kernel ends its gate (parent-death signal), so no gate is left behind."""
    config = load_embodiment("aloha")
    names = tuple(config.action.names)
    node = rclpy.create_node("gate_kill_rig", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    ForwardCommandArms(node, config.arms, ALOHA_START)
    PolicyPulse(node)  # the policy is alive (as policy_node's heartbeat thread says): chunks may drive
    commands: list[tuple[int, float]] = []  # (receive time, first channel)
    states: dict[str, str] = {}
    node.create_subscription(JointState, "/qwen_vla/controller/command",
                             lambda m: commands.append((time.monotonic_ns(), m.position[0])), RELIABLE)
    node.create_subscription(DiagnosticArray, "/qwen_vla/controller/state",
                             lambda m: states.update({v.key: v.value for s in m.status for v in s.values}), 10)
    chunks = node.create_publisher(JointTrajectory, "/qwen_vla/action_chunk", RELIABLE)
    home = [*ALOHA_START, 0.5, *ALOHA_START, 0.5]
    assert names[0] == "left_waist" and home[0] == 0.0  # the first channel is the one watched

    def publish_chunk(first_channel: float) -> None:
        actions = np.tile(home, (50, 1))
        actions[:, 0] = first_channel
        chunks.publish(chunk_to_trajectory(ActionChunk(actions, names, 0.02, node.get_clock().now().nanoseconds)))

    def publish_until(first_channel: float, moved) -> bool:
        """Publish a chunk every 0.2 s, as a policy does, until ``moved`` (a new subscription may not have matched yet)."""
        for _ in range(50):
            publish_chunk(first_channel)
            if ros_domain.spin_until(executor, moved, timeout=0.2):
                return True
        return False

    child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
                                     "-p", f'config_overrides:=["{FORWARD_COMMAND}"]')
    first_gate = second_gate = 0
    try:
        assert ros_domain.spin_until(executor, lambda: int(states.get("gate_pid", 0)) > 0 or child.poll() is not None,
                                     timeout=60)
        first_gate = int(states["gate_pid"])
        assert publish_until(0.3, lambda: commands and commands[-1][1] > 0.29), commands[-1:]

        os.kill(first_gate, 9)
        killed_ns = time.monotonic_ns()
        for _ in range(5):  # a policy still publishing while its chunks have no way in
            publish_chunk(-0.3)
            spin_for(ros_domain, executor, 0.1)
        assert ros_domain.spin_until(
            executor, lambda: int(states.get("gate_starts", 0)) == 2 and states.get("gate_alive") == "True", timeout=60
        ), states
        second_gate = int(states["gate_pid"])
        spin_for(ros_domain, executor, 1.0)  # the new gate is subscribed: would an old chunk reach it now?
        after_kill = [value for stamp, value in commands if stamp > killed_ns]
        assert len(after_kill) > 50, "the controller stopped commanding when its gate died"
        assert min(after_kill) > 0.29, f"a chunk sent while the gate was down moved the arm to {min(after_kill)}"

        assert publish_until(0.0, lambda: commands[-1][1] < 0.01), commands[-1:]  # the policy's next chunks, through the new gate
        assert int(states["gate_failures"]) == 1 and second_gate != first_gate, states

        child.kill()  # no clean shutdown: only the parent-death signal can end the gate now
        child.wait(timeout=10)
        deadline = time.monotonic() + 5.0
        while not process_gone(second_gate) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(second_gate), "the chunk gate outlived a killed controller"
    finally:
        for pid in {int(states.get("gate_pid", 0)), first_gate, second_gate} - {0}:
            if not process_gone(pid):
                os.kill(pid, 9)  # a failed run leaves no orphan (it would also hold the controller's output open)
        output = ros_domain.stop_process(child)
        node.destroy_node()
    assert f"chunk gate (pid {first_gate}) failed: exited with code -9" in output, output
