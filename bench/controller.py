"""Controller loop timing: period error at 50 Hz idle and loaded, the highest sustained rate, CPU%.

    python bench/controller.py [--seconds 8] [--rates 50,100,200,500,1000]

The real controller node runs as a child process (ALOHA embodiment, forward_command
adapter so no extra message package is needed). This process plays the rig: two follower
arms publishing joint states at 50 Hz that follow the commands, and a policy publishing a
50-action chunk every 0.2 s. Period error is |interval - period| between consecutive
``/qwen_vla/controller/command`` stamps, which the node takes at each period of its control loop.
"Loaded" adds one busy-looping process per CPU core. CPU% is the controller process's
user+system time over wall time (100% = one core). On a shared machine, compare with
``baseline_sleep_loop_50hz``: the same statistics for a bare Python sleep loop, no ROS,
measured just before. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qwen_vla_ros.ros_env import apply_dds_profile, with_dds_profile  # noqa: E402

ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
WARM_UP_S = 2.5  # start-up, discovery and the 1 s start ramp are not measured
OUTPUT = "outputs=[{adapter: forward_command, arms: [left, right]}]"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(errors_ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(errors_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(errors_ms, 99)), 3),
        "max_ms": round(float(errors_ms.max()), 3),
    }


def measure(rate_hz: float, seconds: float, loaded: bool, domain: int) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Header
    from trajectory_msgs.msg import JointTrajectory

    from qwen_vla_ros.chunk import ActionChunk
    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.contract import ACTION_CHUNK, COMMAND, POLICY_HEARTBEAT
    from qwen_vla_ros.nodes.common import time_to_ns
    from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory

    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONPATH=str(REPO))
    overrides = f'config_overrides:=["control.rate_hz={rate_hz:g}", "{OUTPUT}"]'
    child = subprocess.Popen(
        [sys.executable, "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha", "-p", overrides],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)] if loaded else []
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("controller_bench_rig", context=context)
    aloha = load_embodiment("aloha")
    names = tuple(aloha.action.names)
    last = {"positions": np.r_[0, -0.96, 1.16, 0, -0.3, 0, 0.5, 0, -0.96, 1.16, 0, -0.3, 0, 0.5]}
    stamps: list[int] = []

    def on_command(message: JointState) -> None:
        stamps.append(time_to_ns(message.header.stamp))
        last["positions"] = np.array(message.position)

    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(JointState, COMMAND.name, on_command, reliable)
    arm_publishers = [node.create_publisher(JointState, arm.joint_state_topic, 10) for arm in aloha.arms]  # left, right
    chunk_publisher = node.create_publisher(JointTrajectory, ACTION_CHUNK.name, reliable)

    def publish_joint_states() -> None:
        for offset, publisher in zip((0, 7), arm_publishers):
            values = last["positions"][offset : offset + 7]
            finger = 0.0440 + values[6] * (0.0579 - 0.0440)
            message = JointState(name=[*ARM, "gripper", "left_finger"], position=[*values[:6], 1.0, finger])
            message.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(message)

    def publish_chunk() -> None:
        now = node.get_clock().now().nanoseconds
        times = now / 1e9 + np.arange(50) * 0.02
        rows = np.tile(np.r_[0, -0.96, 1.16, 0, -0.3, 0, 0.5, 0, -0.96, 1.16, 0, -0.3, 0, 0.5], (50, 1))
        rows[:, [0, 7]] += 0.3 * np.sin(times)[:, None]
        chunk_publisher.publish(chunk_to_trajectory(ActionChunk(rows, names, 0.02, now - 50_000_000)))

    heartbeat = node.create_publisher(Header, POLICY_HEARTBEAT.name, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))

    def publish_heartbeat() -> None:  # the policy's liveness: without it the controller refuses the chunks
        heartbeat.publish(Header(stamp=node.get_clock().now().to_msg()))

    node.create_timer(0.02, publish_joint_states)
    node.create_timer(0.2, publish_chunk)
    node.create_timer(0.05, publish_heartbeat)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 30
        while not stamps and time.monotonic() < deadline and child.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        if not stamps:
            raise RuntimeError(f"the controller sent no command (exit {child.poll()})")
        end_warm_up = time.monotonic() + WARM_UP_S
        while time.monotonic() < end_warm_up:
            executor.spin_once(timeout_sec=0.01)
        first, cpu_start, wall_start = len(stamps), cpu_seconds(child.pid), time.monotonic()
        while time.monotonic() < wall_start + seconds:
            executor.spin_once(timeout_sec=0.01)
        cpu = (cpu_seconds(child.pid) - cpu_start) / (time.monotonic() - wall_start) * 100
        measured = np.array(stamps[first:], dtype=np.int64)
    finally:
        for process in [child, *burners]:
            process.terminate()
        for process in [child, *burners]:
            process.wait(timeout=10)
        node.destroy_node()
        context.try_shutdown()
    period_ms = 1000.0 / rate_hz
    errors = np.abs(np.diff(measured) / 1e6 - period_ms)
    return {
        "rate_hz": rate_hz,
        "loaded": loaded,
        "periods": int(len(errors)),
        "expected_periods": int(seconds * rate_hz),
        **percentiles(errors),
        "p99_fraction_of_period": round(float(np.percentile(errors, 99)) / period_ms, 4),
        "controller_cpu_percent": round(cpu, 1),
    }


def sleep_loop_baseline(rate_hz: float, seconds: float) -> dict[str, float]:
    """The machine's own timing noise: a bare Python loop sleeping to absolute deadlines, no ROS."""
    period = 1.0 / rate_hz
    deadline, stamps = time.monotonic(), []
    for _ in range(int(seconds * rate_hz)):
        deadline += period
        time.sleep(max(0.0, deadline - time.monotonic()))
        stamps.append(time.monotonic())
    return percentiles(np.abs(np.diff(stamps) - period) * 1000.0)


def core_step_cost(periods: int = 2000) -> dict[str, float]:
    """Controller.step + committed in-process, no ROS: the computation inside one period."""
    from qwen_vla_ros.chunk import ActionChunk
    from qwen_vla_ros.config import load_embodiment, load_runtime
    from qwen_vla_ros.control import Controller

    controller = Controller(load_embodiment("aloha"), load_runtime())
    layout = controller.layout
    positions = np.r_[0, -0.96, 1.16, 0, -0.3, 0, 0.5, 0, -0.96, 1.16, 0, -0.3, 0, 0.5]
    step_us, committed_us = [], []
    now = 10**12
    for period in range(periods):
        now += controller.period_ns
        controller.policy_heartbeat(now)
        for arm in layout.arms:
            finger = arm.gripper.finger_close + positions[arm.gripper_index] * (arm.gripper.finger_open - arm.gripper.finger_close)
            controller.update_joint_state(arm.name, [*arm.arm.joint_names, arm.gripper.finger_joint],
                                          [*positions[arm.joint_index], finger], now, now)
        if period % 10 == 0:
            rows = np.tile(positions, (50, 1))
            rows[:, 0] += 0.3 * np.sin(now / 1e9 + np.arange(50) * 0.02)
            controller.submit(ActionChunk(rows, tuple(controller.policy.names), 0.02, now - 50_000_000), now)
        start = time.perf_counter()
        output = controller.step(now)
        middle = time.perf_counter()
        controller.committed(now)
        step_us.append((middle - start) * 1e6)
        committed_us.append((time.perf_counter() - middle) * 1e6)
        positions = output.positions
    return {
        "step_p50_us": round(float(np.percentile(step_us, 50)), 1),
        "step_p99_us": round(float(np.percentile(step_us, 99)), 1),
        "committed_p50_us": round(float(np.percentile(committed_us, 50)), 1),
        "committed_p99_us": round(float(np.percentile(committed_us, 99)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (after warm-up)")
    parser.add_argument("--rates", default="50,100,200,500,1000", help="rates for the sustained-rate sweep (Hz)")
    args = parser.parse_args()
    apply_dds_profile()
    domain = 150 + os.getpid() % 50
    load = [round(v, 2) for v in os.getloadavg()]
    baseline = sleep_loop_baseline(50.0, args.seconds)
    idle = measure(50.0, args.seconds, loaded=False, domain=domain)
    loaded = measure(50.0, args.seconds, loaded=True, domain=domain)
    sweep = [idle] + [measure(float(r), args.seconds, False, domain) for r in args.rates.split(",") if float(r) != 50.0]
    sustained = [r["rate_hz"] for r in sweep if r["p99_fraction_of_period"] < 0.10 and r["periods"] >= 0.9 * r["expected_periods"]]
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": load,
        "baseline_sleep_loop_50hz": baseline,
        "idle_50hz": idle,
        "loaded_50hz": loaded,
        "sweep": sweep,
        "highest_sustained_rate_hz": max(sustained, default=None),
        "core_step": core_step_cost(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
