"""rclpy executors with a 50 Hz timer and 50 Hz subscriptions: timer jitter, timer rate, CPU%.

    python bench/executor.py [--seconds 4] [--subscriptions 2] [--repeat 5] [--threads 2]

Compares ``SingleThreadedExecutor``, rclpy's ``MultiThreadedExecutor`` and
``nodes.common.YieldingMultiThreadedExecutor`` (the one ``run_node`` uses), with and
without subscriptions. The timer is in its own MutuallyExclusiveCallbackGroup, the
subscriptions in a ReentrantCallbackGroup, as in the controller. Each variant runs in its
own process, ``--repeat`` times, because rclpy's busy loop (ros2/rclpy#1452) starts by
chance: a run counts as starved when the timer fires below 45/s. CPU% covers the executor
under test and the publisher feeding it. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("single", "multi", "yielding")


def run_variant(variant: str, subscriptions: int, seconds: float, threads: int) -> dict:
    sys.path.insert(0, str(REPO))
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from qwen_vla_ros.nodes.common import YieldingMultiThreadedExecutor

    rclpy.init(domain_id=180 + os.getpid() % 40)
    node = rclpy.create_node("executor_under_test")
    ticks: list[float] = []
    node.create_timer(0.02, lambda: ticks.append(time.monotonic()), callback_group=MutuallyExclusiveCallbackGroup())
    group = ReentrantCallbackGroup()
    for index in range(subscriptions):
        node.create_subscription(JointState, f"/bench_joint_states_{index}", lambda _: None, 10, callback_group=group)
    source = rclpy.create_node("bench_publisher")
    publishers = [source.create_publisher(JointState, f"/bench_joint_states_{i}", 10) for i in range(subscriptions)]
    source.create_timer(0.02, lambda: [p.publish(JointState(name=["j"] * 9, position=[0.0] * 9)) for p in publishers])
    executor = {"single": SingleThreadedExecutor, "multi": lambda: MultiThreadedExecutor(num_threads=threads),
                "yielding": lambda: YieldingMultiThreadedExecutor(num_threads=threads)}[variant]()
    executor.add_node(node)
    feeder = SingleThreadedExecutor()
    feeder.add_node(source)
    for spinner in (feeder, executor):
        threading.Thread(target=spinner.spin, daemon=True).start()
    time.sleep(1.5)
    first, cpu_start = len(ticks), time.process_time()
    time.sleep(seconds)
    cpu = (time.process_time() - cpu_start) / seconds * 100
    errors = np.abs(np.diff(ticks[first:]) - 0.02) * 1000
    return {
        "executor": variant,
        "subscriptions": subscriptions,
        "timer_callbacks_per_s": round((len(ticks) - first) / seconds, 1),
        "p50_ms": round(float(np.percentile(errors, 50)), 3),
        "p99_ms": round(float(np.percentile(errors, 99)), 3),
        "cpu_percent": round(cpu, 1),
    }


def summarize(runs: list[dict]) -> dict:
    return {
        "executor": runs[0]["executor"],
        "subscriptions": runs[0]["subscriptions"],
        "runs": len(runs),
        "starved_runs": sum(r["timer_callbacks_per_s"] < 45 for r in runs),
        "median_timer_callbacks_per_s": float(np.median([r["timer_callbacks_per_s"] for r in runs])),
        "median_p99_ms": float(np.median([r["p99_ms"] for r in runs])),
        "median_cpu_percent": float(np.median([r["cpu_percent"] for r in runs])),
        "max_cpu_percent": max(r["cpu_percent"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--subscriptions", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="worker threads of the multi-threaded executors")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.count, args.seconds, args.threads)), flush=True)
        os._exit(0)  # daemon spin threads; nothing to clean up
    load = [round(v, 2) for v in os.getloadavg()]
    summaries = []
    for count in (0, args.subscriptions):
        for variant in VARIANTS:
            runs = []
            for _ in range(args.repeat):
                output = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--count", str(count), "--seconds",
                     str(args.seconds), "--threads", str(args.threads)],
                    capture_output=True, text=True, timeout=args.seconds + 60,
                )
                runs.append(json.loads(output.stdout.strip().splitlines()[-1]))
            summaries.append(summarize(runs))
    print(json.dumps({"load_average_before": load, "threads": args.threads, "results": summaries}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
