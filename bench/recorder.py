"""Benchmark of trial_recorder: ALOHA-sized streams over real DDS into a real bag; prints JSON.

Two measurements:

* ``writer``: the writer thread's capacity. The same message mix as the stream (by size and
  proportion) is pushed through the real queue and rosbags MCAP writer as fast as it will
  go, flushes and fsync included; MB/s over the stream's MB/s is the headroom.
* ``ros``: the real node. A publisher process sends 4 cameras (640x480 rgb8, 30 Hz), two
  arms' joint states (100 Hz) and controller commands (50 Hz) for ``--duration`` seconds
  while the recorder process records them as trials of ``--trial-length`` seconds. Per
  trial: messages published vs written, queue drops, MB/s, and the recorder's CPU% and RSS.
  Finished trial bags are deleted unless ``--keep`` (a 10-minute soak is ~66 GB otherwise).

    python bench/recorder.py                          # 60 s
    python bench/recorder.py --duration 600 --trial-length 60   # soak
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.contract import COMMAND, TRIAL_START, TRIAL_SUCCESS  # noqa: E402

GOAL_HEADROOM = 2.0


def stream_plan(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(topic, type, rate_hz) of every stream, from the ALOHA config."""
    aloha = load_embodiment("aloha")
    plan = [(c.topic, "sensor_msgs/msg/Image", args.camera_hz) for c in aloha.cameras[: args.cameras]]
    plan += [(a.joint_state_topic, "sensor_msgs/msg/JointState", args.joint_hz) for a in aloha.arms]
    plan.append((COMMAND.name, COMMAND.msg_type, args.command_hz))
    return plan


def serialized_messages(args: argparse.Namespace) -> dict[str, bytes]:
    """One realistic serialised message per topic (CDR bytes as rclpy delivers them)."""
    import numpy as np
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from qwen_vla_ros.nodes.ros_contract import image_to_msg

    aloha = load_embodiment("aloha")
    frame = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    messages = {}
    for topic, msgtype, _ in stream_plan(args):
        if msgtype.endswith("Image"):
            messages[topic] = serialize_message(image_to_msg(frame, "rgb8", time.time_ns(), topic.split("/")[1]))
        elif topic.endswith("command"):
            messages[topic] = serialize_message(JointState(name=aloha.action.names, position=[0.1] * 14))
        else:
            names = [j.name for j in aloha.arms[0].joints] + ["gripper", "left_finger", "right_finger"]
            messages[topic] = serialize_message(JointState(name=names, position=[0.1] * 9, velocity=[0.0] * 9, effort=[0.0] * 9))
    return messages


def stream_mb_per_s(args: argparse.Namespace, messages: dict[str, bytes]) -> float:
    return sum(len(messages[topic]) * rate for topic, _, rate in stream_plan(args)) / 1e6


def measure_writer(args: argparse.Namespace, messages: dict[str, bytes], workdir: Path) -> dict:
    from qwen_vla_ros.recording.bag import RosbagsBagWriter, typestore_for_distro
    from qwen_vla_ros.recording.writer import BagRecorder, MessageQueue, QueuedMessage

    plan = stream_plan(args)
    seconds = args.writer_seconds
    events = sorted((k / rate, topic, msgtype) for topic, msgtype, rate in plan for k in range(int(seconds * rate)))
    queue = MessageQueue(max_bytes=1 << 40)  # unbounded here: capacity, not back-pressure, is measured
    begin = time.perf_counter()
    cpu = time.process_time()
    writer = RosbagsBagWriter(workdir / "writer_bag", typestore_for_distro(), fsync=not args.no_fsync)
    recorder = BagRecorder(writer, queue, 1.0)
    total = 0
    for at, topic, msgtype in events:
        queue.put(QueuedMessage(topic, msgtype, int(at * 1e9), messages[topic]))
        total += len(messages[topic])
    stats = recorder.stop()
    elapsed = time.perf_counter() - begin
    shutil.rmtree(workdir / "writer_bag")
    return {
        "stream_seconds": seconds,
        "messages": sum(stats.written.values()),
        "mb": round(total / 1e6, 1),
        "mb_per_s": round(total / 1e6 / elapsed, 1),
        "cpu_s_per_stream_s": round((time.process_time() - cpu) / seconds, 3),
    }


def publish(args: argparse.Namespace) -> None:
    """Publisher process: wait for the recorder, then stream on 'go' until told to stop."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    from qwen_vla_ros.ros_env import apply_dds_profile

    apply_dds_profile()
    rclpy.init()
    node = rclpy.create_node("recorder_bench_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    messages = serialized_messages(args)
    plan = stream_plan(args)
    publishers = {
        topic: node.create_publisher(Image if msgtype.endswith("Image") else JointState, topic, qos)
        for topic, msgtype, _ in plan
    }
    while any(p.get_subscription_count() == 0 for p in publishers.values()):
        time.sleep(0.05)
    print("ready", flush=True)
    counts = {topic: 0 for topic in publishers}
    for line in sys.stdin:  # "go SECONDS" per trial, "quit" at the end
        if line.startswith("quit"):
            break
        seconds = float(line.split()[1])
        start = time.monotonic()
        due = {topic: start for topic, _, _ in plan}
        periods = {topic: 1.0 / rate for topic, _, rate in plan}
        while True:
            topic = min(due, key=due.get)
            if due[topic] - start >= seconds:
                break
            delay = due[topic] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publishers[topic].publish(messages[topic])
            counts[topic] += 1
            due[topic] += periods[topic]
        print(json.dumps(counts), flush=True)
    node.destroy_node()
    rclpy.shutdown()


class Sampler(threading.Thread):
    """CPU% (of one core) and RSS of a process, sampled once a second."""

    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.cpu: list[float] = []
        self.rss_mb: list[float] = []
        self.running = True

    def run(self) -> None:
        self.process.cpu_percent(None)
        while self.running:
            time.sleep(1.0)
            try:
                self.cpu.append(self.process.cpu_percent(None) + sum(c.cpu_percent(None) for c in self.process.children()))
                self.rss_mb.append(self.process.memory_info().rss / 1e6)
            except Exception:  # the process ended
                return


def measure_ros(args: argparse.Namespace, messages: dict[str, bytes], workdir: Path) -> dict:
    import rclpy
    from std_srvs.srv import Trigger

    from qwen_vla_ros.ros_env import with_dds_profile

    env = with_dds_profile(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")})
    output = workdir / "trials"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p", f"output_dir:={output}",
         "-p", f"queue_max_mb:={args.queue_mb}", "-p", "discovery_period_s:=0.2",
         "-p", f"fsync:={str(not args.no_fsync).lower()}", "-p", f"qos_depth:={args.qos_depth}"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    publisher = subprocess.Popen(
        [sys.executable, __file__, "--publisher", *args.forward], env=env, cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    rclpy.init()
    node = rclpy.create_node("recorder_bench")
    clients = {name: node.create_client(Trigger, service.name)
               for name, service in (("start", TRIAL_START), ("stop_success", TRIAL_SUCCESS))}

    def call(name: str) -> str:
        future = clients[name].call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=600)
        response = future.result()
        if response is None or not response.success:
            raise RuntimeError(f"{name} failed: {response}")
        return response.message

    trials = []
    try:
        assert clients["start"].wait_for_service(timeout_sec=60), "recorder did not start"
        assert publisher.stdout.readline().strip() == "ready", "publisher did not start"
        sampler = Sampler(recorder.pid)
        sampler.start()
        remaining = args.duration
        previous = {topic: 0 for topic in messages}
        while remaining > 0:
            length = min(args.trial_length, remaining)
            cpu_mark, rss_mark = len(sampler.cpu), len(sampler.rss_mb)
            call("start")
            publisher.stdin.write(f"go {length}\n")
            publisher.stdin.flush()
            totals = json.loads(publisher.stdout.readline())
            time.sleep(0.5)  # the last messages in flight
            call("stop_success")
            published = {topic: totals[topic] - previous[topic] for topic in totals}
            previous = totals
            trial_dir = sorted((output / "trials").iterdir())[-1]
            trials.append(trial_result(trial_dir, published, messages, length,
                                       sampler.cpu[cpu_mark:], sampler.rss_mb[rss_mark:]))
            if not args.keep:
                shutil.rmtree(trial_dir / "bag")
            remaining -= length
        sampler.running = False
    finally:
        if publisher.poll() is None:
            publisher.stdin.write("quit\n")
            publisher.stdin.flush()
        recorder.terminate()
        for process in (publisher, recorder):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        node.destroy_node()
        rclpy.shutdown()
    return {"trials": trials, "summary": summarize(trials)}


def trial_result(trial_dir: Path, published: dict[str, int], messages: dict[str, bytes], seconds: float,
                 cpu: list[float], rss_mb: list[float]) -> dict:
    import yaml

    record = yaml.safe_load((trial_dir / "trial.yaml").read_text())
    topics = record["topics"]
    written = {t: topics.get(t, {}).get("messages", 0) for t in published}
    return {
        "trial": record["id"],
        "seconds": seconds,
        "published": sum(published.values()),
        "written": sum(written.values()),
        "queue_drops": sum(t["dropped"] for t in topics.values()),
        "lost_before_recorder": sum(max(0, published[t] - written[t]) for t in published),
        "lost_by_topic": {t: published[t] - written[t] for t in published if published[t] != written[t]},
        "stream_mb_per_s": round(sum(published[t] * len(messages[t]) for t in published) / seconds / 1e6, 1),
        "bag_mb": round(sum(f.stat().st_size for f in (trial_dir / "bag").glob("*")) / 1e6, 1),
        "writer_mb_per_busy_s": record["writer_mb_per_s"],
        "queue_peak_mb": record["queue_peak_mb"],
        "recorder_cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "recorder_cpu_percent_max": round(max(cpu), 1) if cpu else None,
        "recorder_rss_mb_max": round(max(rss_mb), 1) if rss_mb else None,
    }


def summarize(trials: list[dict]) -> dict:
    return {
        "published": sum(t["published"] for t in trials),
        "written": sum(t["written"] for t in trials),
        "queue_drops": sum(t["queue_drops"] for t in trials),
        "lost_before_recorder": sum(t["lost_before_recorder"] for t in trials),
        "recorder_cpu_percent_mean": round(sum(t["recorder_cpu_percent_mean"] or 0 for t in trials) / len(trials), 1),
        "writer_mb_per_busy_s_min": min(t["writer_mb_per_busy_s"] for t in trials),
        "queue_peak_mb_max": max(t["queue_peak_mb"] for t in trials),
        "recorder_rss_mb_first_trial": trials[0]["recorder_rss_mb_max"],
        "recorder_rss_mb_last_trial": trials[-1]["recorder_rss_mb_max"],
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds streamed over DDS in total")
    parser.add_argument("--trial-length", type=float, default=60.0, help="seconds per recorded trial")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=100.0)
    parser.add_argument("--command-hz", type=float, default=50.0)
    parser.add_argument("--writer-seconds", type=float, default=20.0, help="stream seconds pushed through the writer")
    parser.add_argument("--queue-mb", type=float, default=512.0)
    parser.add_argument("--qos-depth", type=int, default=1000, help="the recorder's subscription history depth")
    parser.add_argument("--no-fsync", action="store_true", help="flush to the OS only (survives a process crash, not power loss)")
    parser.add_argument("--skip-ros", action="store_true", help="only the writer measurement")
    parser.add_argument("--keep", action="store_true", help="keep the trial bags")
    parser.add_argument("--workdir", help="where bags are written (default: a temporary folder)")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.forward = [f"--cameras={args.cameras}", f"--width={args.width}", f"--height={args.height}",
                    f"--camera-hz={args.camera_hz}", f"--joint-hz={args.joint_hz}", f"--command-hz={args.command_hz}"]
    return args


def main() -> None:
    args = parse()
    if args.publisher:
        publish(args)
        return
    messages = serialized_messages(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recorder_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    stream = stream_mb_per_s(args, messages)
    result: dict = {
        "machine": f"{os.cpu_count()} CPUs",
        "streams": [{"topic": t, "hz": r, "bytes": len(messages[t])} for t, _, r in stream_plan(args)],
        "stream_mb_per_s": round(stream, 1),
    }
    result["writer"] = measure_writer(args, messages, workdir)
    result["writer"]["headroom"] = round(result["writer"]["mb_per_s"] / stream, 2)
    result["writer"]["goal_met"] = result["writer"]["headroom"] >= GOAL_HEADROOM
    if not args.skip_ros:
        result["ros"] = measure_ros(args, messages, workdir)
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
