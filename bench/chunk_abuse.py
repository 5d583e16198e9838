"""Chunk abuse: does any chunk traffic starve the 50 Hz control loop?

    python bench/chunk_abuse.py [--flood-s 5] [--rate 1000] [--large 8] [--large-points 100000]

The real ALOHA controller node runs as a child process (forward_command adapter, so no extra
message package is needed). This process plays the rig: two follower arms publishing joint
states at 50 Hz that follow the commands, and a well-behaved policy publishing a 50-action
chunk every 0.2 s. A second child process, the abuser (``--abuse``), then publishes on
/qwen_vla/action_chunk:

1. ``flood``: ``--flood-s`` seconds of valid 50-action chunks at ``--rate`` per second;
2. ``nan_flood``: as long again, chunks whose every value is NaN;
3. ``large``: ``--large`` chunks of ``--large-points`` points (100k points: 15 MB each).

Per phase (and for a quiet phase before), from the stamps of /qwen_vla/controller/command,
which the node takes at each period of its loop: the period error |interval - 20 ms| (p99,
max) and the longest gap between commands. The controller's own counters (dropped, rejected
by reason) are read from its last /qwen_vla/controller/state. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qwen_vla_ros.contract import ACTION_CHUNK, COMMAND, CONTROLLER_STATE  # noqa: E402
from qwen_vla_ros.ros_env import apply_dds_profile, with_dds_profile  # noqa: E402

ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
HOME = [0, -0.96, 1.16, 0, -0.3, 0, 0.5, 0, -0.96, 1.16, 0, -0.3, 0, 0.5]
OUTPUT = "outputs=[{adapter: forward_command, arms: [left, right]}]"
PERIOD_MS = 20.0  # config/aloha.yaml: control.rate_hz 50
QUIET_S = 3.0
STAMP_OFFSET = 4  # CDR: a 4-byte encapsulation header, then header.stamp (int32 sec, uint32 nanosec)
BATCH_S = 0.005  # the abuser publishes in batches this far apart, to keep its own rate up


def restamp(serialized: bytearray, stamp_ns: int) -> bytes:
    """The serialized chunk with a new header stamp: the flood sends 1000 distinct, newer chunks a
    second without building each message in Python (which alone would cap the rate)."""
    struct.pack_into("<iI", serialized, STAMP_OFFSET, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(serialized)


def abuse(domain: int, flood_s: float, rate: float, large: int, large_points: int) -> None:
    """The abuser process: prints one JSON line per phase with its wall-clock start and end (ns)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from trajectory_msgs.msg import JointTrajectory

    from qwen_vla_ros.chunk import ActionChunk
    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory

    names = tuple(load_embodiment("aloha").action.names)
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("chunk_abuser", context=context)
    publisher = node.create_publisher(JointTrajectory, ACTION_CHUNK.name, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    valid = bytearray(serialize_message(chunk_to_trajectory(ActionChunk(np.tile(HOME, (50, 1)), names, 0.02, 0))))
    nan = bytearray(serialize_message(chunk_to_trajectory(ActionChunk(np.full((50, 14), np.nan), names, 0.02, 0))))
    huge = bytearray(serialize_message(chunk_to_trajectory(ActionChunk(np.tile(HOME, (large_points, 1)), names, 0.02, 0))))
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    def flood(template: bytearray, name: str) -> None:
        start, sent = time.time_ns(), 0
        end_at = time.monotonic() + flood_s
        next_batch = time.monotonic()
        while time.monotonic() < end_at:
            due = int((time.monotonic() - (end_at - flood_s)) * rate)
            while sent < due:
                publisher.publish(restamp(template, time.time_ns() - 30_000_000))
                sent += 1
            next_batch += BATCH_S
            time.sleep(max(0.0, next_batch - time.monotonic()))
        print(json.dumps({"phase": name, "start_ns": start, "end_ns": time.time_ns(), "sent": sent,
                          "bytes_each": len(template)}), flush=True)

    flood(valid, "flood")
    flood(nan, "nan_flood")
    start = time.time_ns()
    for _ in range(large):
        publisher.publish(restamp(huge, time.time_ns() - 30_000_000))
        time.sleep(0.25)
    time.sleep(1.0)  # the last one may still be on its way
    print(json.dumps({"phase": "large", "start_ns": start, "end_ns": time.time_ns(), "sent": large,
                      "bytes_each": len(huge)}), flush=True)
    node.destroy_node()
    context.try_shutdown()


def phase_figures(stamps_ns: np.ndarray, start_ns: int, end_ns: int) -> dict[str, float | int]:
    inside = stamps_ns[(stamps_ns >= start_ns) & (stamps_ns <= end_ns)]
    intervals_ms = np.diff(inside) / 1e6
    errors = np.abs(intervals_ms - PERIOD_MS)
    # The gap that spans the phase's start or end counts too: a stall may begin before a phase's first command.
    edges = np.diff(stamps_ns[(stamps_ns >= start_ns - 200_000_000) & (stamps_ns <= end_ns + 200_000_000)]) / 1e6
    return {
        "commands": int(len(inside)),
        "expected_commands": int((end_ns - start_ns) / 1e6 / PERIOD_MS),
        "period_error_ms_p99": round(float(np.percentile(errors, 99)), 2) if len(errors) else float("nan"),
        "period_error_ms_max": round(float(errors.max()), 2) if len(errors) else float("nan"),
        "longest_gap_ms": round(float(edges.max()), 2) if len(edges) else float("nan"),
        "gaps_over_60_ms": int(np.count_nonzero(edges > 3 * PERIOD_MS)),
    }


def run(args: argparse.Namespace, domain: int) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from qwen_vla_ros.chunk import ActionChunk
    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.nodes.common import time_to_ns
    from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory

    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONPATH=str(REPO))
    controller = subprocess.Popen(
        [sys.executable, "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
         "-p", f'config_overrides:=["{OUTPUT}"]'],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("chunk_abuse_rig", context=context)
    names = tuple(load_embodiment("aloha").action.names)
    last = {"positions": np.array(HOME, dtype=float)}
    stamps: list[int] = []
    states: list[DiagnosticArray] = []

    def on_command(message: JointState) -> None:
        stamps.append(time_to_ns(message.header.stamp))
        last["positions"] = np.array(message.position)

    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(JointState, COMMAND.name, on_command, reliable)
    node.create_subscription(DiagnosticArray, CONTROLLER_STATE.name, states.append, 10)
    arm_publishers = [node.create_publisher(JointState, f"/follower_{side}/joint_states", 10) for side in ("left", "right")]
    chunk_publisher = node.create_publisher(JointTrajectory, ACTION_CHUNK.name, reliable)

    def publish_joint_states() -> None:
        for offset, publisher in zip((0, 7), arm_publishers, strict=True):
            values = last["positions"][offset : offset + 7]
            finger = 0.0440 + values[6] * (0.0579 - 0.0440)
            message = JointState(name=[*ARM, "gripper", "left_finger"], position=[*values[:6], 1.0, finger])
            message.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(message)

    def publish_chunk() -> None:
        now = node.get_clock().now().nanoseconds
        rows = np.tile(HOME, (50, 1))
        rows[:, [0, 7]] += 0.3 * np.sin(now / 1e9 + np.arange(50) * 0.02)[:, None]
        chunk_publisher.publish(chunk_to_trajectory(ActionChunk(rows, names, 0.02, now - 50_000_000)))

    node.create_timer(0.02, publish_joint_states)
    node.create_timer(0.2, publish_chunk)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    abuser = None
    try:
        deadline = time.monotonic() + 30
        while not stamps and time.monotonic() < deadline and controller.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        if not stamps:
            raise RuntimeError(f"the controller sent no command (exit {controller.poll()})")
        quiet_start = time.time_ns()
        end_quiet = time.monotonic() + QUIET_S
        while time.monotonic() < end_quiet:
            executor.spin_once(timeout_sec=0.01)
        quiet_end = time.time_ns()
        abuser = subprocess.Popen(
            [sys.executable, __file__, "--abuse", "--domain", str(domain), "--flood-s", str(args.flood_s),
             "--rate", str(args.rate), "--large", str(args.large), "--large-points", str(args.large_points)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        phases = [{"phase": "quiet", "start_ns": quiet_start, "end_ns": quiet_end}]
        reader = threading.Thread(target=lambda: phases.extend(json.loads(line) for line in abuser.stdout if line.strip()))
        reader.start()
        while abuser.poll() is None:
            executor.spin_once(timeout_sec=0.01)
        reader.join(timeout=10)
        end_settle = time.monotonic() + 1.5
        while time.monotonic() < end_settle:  # the last state report
            executor.spin_once(timeout_sec=0.01)
    finally:
        for process in (abuser, controller):
            if process is not None and process.poll() is None:
                process.terminate()
        try:
            log = controller.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:  # still busy with what it received: say so, and stop it
            controller.kill()
            log = controller.communicate()[0] + "\n[benchmark: the controller did not stop within 10 s of SIGTERM]"
        if abuser is not None:
            abuser.wait(timeout=10)
        node.destroy_node()
        context.try_shutdown()
    measured = np.array(stamps, dtype=np.int64)
    counters = {kv.key: kv.value for kv in states[-1].status[0].values} if states else {}
    keys = ("chunks_accepted", "chunks_rejected", "chunks_dropped", "rejected_too_large", "rejected_non_finite",
            "rejected_stale", "rejected_out_of_order", "periods_skipped", "period_error_ms_max",
            "gate_received", "gate_too_large", "gate_malformed", "gate_dropped", "gate_failures")
    return {
        "phases": {p["phase"]: {**{k: v for k, v in p.items() if k not in ("phase", "start_ns", "end_ns")},
                                **phase_figures(measured, p["start_ns"], p["end_ns"])} for p in phases},
        "controller_counters": {key: counters.get(key) for key in keys},
        "controller_log_tracebacks": log.count("Traceback"),
        "controller_stopped_on_sigterm": "did not stop within 10 s" not in log,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-s", type=float, default=5.0, help="seconds of each flood")
    parser.add_argument("--rate", type=float, default=1000.0, help="chunks per second in the floods")
    parser.add_argument("--large", type=int, default=8, help="number of oversized chunks")
    parser.add_argument("--large-points", type=int, default=100_000, help="points in each oversized chunk")
    parser.add_argument("--abuse", action="store_true", help="be the abuser process (started by the benchmark)")
    parser.add_argument("--domain", type=int, default=None, help="ROS domain id (default: from the pid)")
    args = parser.parse_args()
    apply_dds_profile()
    domain = args.domain if args.domain is not None else 150 + os.getpid() % 50
    if args.abuse:
        abuse(domain, args.flood_s, args.rate, args.large, args.large_points)
        return 0
    load = [round(v, 2) for v in os.getloadavg()]
    result = run(args, domain)
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": load,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "settings": {"flood_s": args.flood_s, "rate_per_s": args.rate, "large": args.large, "large_points": args.large_points},
        **result,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
