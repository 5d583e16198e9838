"""Camera frames into the policy: latency and drops with N cameras in separate processes.

Starts one ``camera_node`` process per camera (640x480 rgb8 at 30 Hz by default, each playing
a generated MJPG video) and, in this process, a subscriber with the policy node's camera QoS
and executor (``--executor multi`` for rclpy's multi-threaded one). For every frame it records

    latency = ROS time at the subscription callback - header.stamp

where the stamp is camera_node's capture time (taken right after the frame is read), so the
figure covers camera_node's conversion and serialisation as well as DDS. Each video frame
carries its index in a grey band (steps of 8, robust to JPEG), so a frame that never arrives
is counted as a drop. Prints one JSON object; the first seconds (discovery) are not counted.

    python bench/camera_latency.py --duration 60
    python bench/camera_latency.py --duration 20 --dds-profile default   # FastDDS built-in transports
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qwen_vla_ros.ros_env import DDS_PROFILE_ENV, dds_profile_path  # noqa: E402

CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
LEVELS = 32  # distinct band levels, 8 apart
BAND_ROWS = 32


def write_indexed_video(path: Path, width: int, height: int, fps: float) -> None:
    """LEVELS frames: an index band (grey 8 * k + 4) over smooth colour waves. Decoding (about
    1 ms a frame) happens before the capture stamp, as a RealSense delivers raw frames; it only
    adds CPU load."""
    y, x = np.mgrid[0:height, 0:width]
    waves = [128 + 100 * np.sin(x / 40), 128 + 100 * np.cos(y / 30), 128 + 100 * np.sin((x + y) / 50)]
    texture = np.stack(waves, axis=-1).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for k in range(LEVELS):
        frame = texture.copy()
        frame[:BAND_ROWS] = 8 * k + 4
        writer.write(frame)
    writer.release()


def band_index(data: memoryview | bytes, width: int) -> int:
    row = np.frombuffer(data, dtype=np.uint8, count=width * 3 * 8, offset=width * 3 * 8)  # rows 8..15
    return int(row.mean() // 8) % LEVELS


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured, after --warmup")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--executor", choices=("single", "multi"), default="single",
                        help="the subscriber's executor: policy_node spins a SingleThreadedExecutor")
    parser.add_argument("--dds-profile", default=str(dds_profile_path()),
                        help="FastDDS XML profile, or 'default' for FastDDS's built-in transports")
    args = parser.parse_args()

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    empty_profile = None
    if args.dds_profile == "default":
        empty_profile = tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False)
        empty_profile.write('<?xml version="1.0"?><profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"/>')
        empty_profile.close()
        env[DDS_PROFILE_ENV] = empty_profile.name
    else:
        env[DDS_PROFILE_ENV] = args.dds_profile
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", DDS_PROFILE_ENV)})

    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from qwen_vla_ros.contract import QosKind
    from qwen_vla_ros.nodes.common import time_to_ns
    from qwen_vla_ros.nodes.ros_contract import SUBSCRIPTION_QOS

    names = CAMERAS[: args.cameras]
    work = Path(tempfile.mkdtemp(prefix="camera_latency_"))
    video = work / "indexed.avi"
    write_indexed_video(video, args.width, args.height, args.fps)

    rclpy.init()
    node = rclpy.create_node("camera_latency_bench")
    lock = threading.Lock()
    measuring = threading.Event()
    latencies: dict[str, list[float]] = {name: [] for name in names}
    indices: dict[str, list[tuple[int, int]]] = {name: [] for name in names}  # (stamp, band index)
    seen: set[str] = set()

    def on_image(name: str, msg: Image) -> None:
        stamp = time_to_ns(msg.header.stamp)
        latency_ms = (node.get_clock().now().nanoseconds - stamp) / 1e6
        index = band_index(msg.data, msg.width)
        with lock:
            seen.add(name)
            if measuring.is_set():
                latencies[name].append(latency_ms)
                indices[name].append((stamp, index))

    for name in names:
        node.create_subscription(Image, f"/{name}/camera/color/image_rect_raw", lambda m, n=name: on_image(n, m),
                                 SUBSCRIPTION_QOS[QosKind.CAMERA], callback_group=MutuallyExclusiveCallbackGroup())  # each in order
    executor = {"multi": MultiThreadedExecutor, "single": SingleThreadedExecutor}[args.executor]()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    children = []
    for index, name in enumerate(CAMERAS):
        if name not in names:
            continue
        parameters = work / f"{name}.yaml"
        overrides = [f"cameras.{index}.source={{type: video, path: {video}}}", f"cameras.{index}.width={args.width}",
                     f"cameras.{index}.height={args.height}", f"cameras.{index}.fps={args.fps}",
                     "clock_check.heartbeat_hz=0"]
        parameters.write_text(yaml.safe_dump({"camera_node": {"ros__parameters": {
            "cameras": [name], "config_overrides": overrides[:-1], "runtime_overrides": overrides[-1:]}}}))
        children.append(subprocess.Popen(
            [sys.executable, "-m", "qwen_vla_ros.nodes.camera_node", "--ros-args", "--params-file", str(parameters)],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))
    try:
        deadline = time.monotonic() + 60
        while len(seen) < len(names) and time.monotonic() < deadline:
            if any(child.poll() is not None for child in children):
                raise RuntimeError("a camera_node exited: " + " ".join(c.stderr.read() for c in children if c.poll() is not None))
            time.sleep(0.1)
        time.sleep(args.warmup)
        cpu_start = {child.pid: cpu_seconds(child.pid) for child in children}
        own_start = time.process_time()
        measuring.set()
        time.sleep(args.duration)
        measuring.clear()
        cpu = {pid: cpu_seconds(pid) - start for pid, start in cpu_start.items()}
        own_cpu = time.process_time() - own_start
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
        if empty_profile is not None:
            os.unlink(empty_profile.name)

    def summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        array = np.asarray(values)
        return {"p50_ms": round(float(np.percentile(array, 50)), 3), "p99_ms": round(float(np.percentile(array, 99)), 3),
                "max_ms": round(float(array.max()), 3)}

    # In capture order, every missing band index between two received frames is a frame dropped.
    drops = {name: sum((b - a - 1) % LEVELS for (_, a), (_, b) in zip(sorted(frames), sorted(frames)[1:]))
             for name, frames in indices.items()}
    everything = [v for values in latencies.values() for v in values]
    expected = args.fps * args.duration
    result = {
        "benchmark": "camera_latency",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "dds_profile": args.dds_profile,
        "executor": args.executor,
        "cameras": len(names),
        "resolution": f"{args.width}x{args.height}",
        "fps": args.fps,
        "duration_s": args.duration,
        "latency": summary(everything),
        "frames_received": len(everything),
        "frames_expected": round(expected * len(names)),
        "drops": sum(drops.values()),
        "per_camera": {name: {"frames": len(latencies[name]), "drops": drops[name], **summary(latencies[name])}
                       for name in names},
        "cpu_cores": {"camera_nodes": round(sum(cpu.values()) / args.duration, 3),
                      "subscriber": round(own_cpu / args.duration, 3)},
    }
    result["goal"] = {"p99_le_5ms": result["latency"]["p99_ms"] <= 5.0, "zero_drops": result["drops"] == 0}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
