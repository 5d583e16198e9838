"""camera_node: one node serving several cameras (RealSense, RealSense recordings, video).

Each camera of the embodiment whose ``source`` is ``realsense``, ``bag`` or ``video`` gets a
capture thread (``perception.capture``) that publishes ``sensor_msgs/Image`` on the camera's
topic and ``CameraInfo`` beside it, stamped with the capture time in ROS time. Cameras with
``source: topic`` belong to another driver (e.g. realsense2_camera) and are skipped.

    python -m qwen_vla_ros.nodes.camera_node --ros-args -p config:=aloha \\
        -p config_overrides:="['cameras.0.source={type: realsense, serial: \\"130322270000\\"}']"
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.config.hardware import Camera, CameraSourceTopic
from qwen_vla_ros.contract import DIAGNOSTICS, NodeRole, info_topic, role_view
from qwen_vla_ros.nodes.common import declare_configs, ns_to_time, run_node
from qwen_vla_ros.nodes.heartbeat import Heartbeat
from qwen_vla_ros.nodes.ros_contract import Level, create_publisher, diagnostic_array, diagnostic_status, image_to_msg
from qwen_vla_ros.perception.capture import Backoff, CameraCapture
from qwen_vla_ros.perception.sources import Intrinsics, open_source


def camera_info(camera: Camera, stamp_ns: int, frame_id: str, intrinsics: Intrinsics | None) -> CameraInfo:
    """Calibrated when the source knows its intrinsics; otherwise the size only (K all zero,
    ROS's mark of an uncalibrated camera)."""
    msg = CameraInfo(width=camera.width, height=camera.height)
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    if intrinsics is not None:
        msg.distortion_model = intrinsics.distortion_model
        msg.d = list(intrinsics.coefficients)
        msg.k = [intrinsics.fx, 0.0, intrinsics.cx, 0.0, intrinsics.fy, intrinsics.cy, 0.0, 0.0, 1.0]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [intrinsics.fx, 0.0, intrinsics.cx, 0.0, 0.0, intrinsics.fy, intrinsics.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def selected_cameras(cameras: Sequence[Camera], names: Sequence[str]) -> list[Camera]:
    """The named cameras (all with a source camera_node serves when none are named)."""
    by_name = {c.name: c for c in cameras}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError("camera_node parameter 'cameras'", [f"unknown cameras {unknown}; the config has {list(by_name)}"])
    chosen = [by_name[n] for n in names] if names else [c for c in cameras if not isinstance(c.source, CameraSourceTopic)]
    driven = [c.name for c in chosen if isinstance(c.source, CameraSourceTopic)]
    problems = [f"cameras {driven} have source 'topic': their driver publishes them"] if driven else []
    if not chosen:
        problems.append("no camera with a realsense, bag or video source; set cameras[i].source in the config")
    if problems:
        raise ConfigError("camera_node", problems)
    return chosen


class CameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_node", **kwargs)
        config, runtime = declare_configs(self, "aloha")
        retry_max_s = float(self.declare_parameter("retry_max_s", 10.0, ParameterDescriptor(dynamic_typing=True)).value)
        requested: list[str] = self.declare_parameter("cameras", [""], ParameterDescriptor(dynamic_typing=True)).value or []
        names = [n for n in requested if n]
        if not retry_max_s > 0:
            raise ConfigError("camera_node parameters", [f"retry_max_s must be > 0, got {retry_max_s}"])
        self.config = config
        cameras = selected_cameras(config.cameras, names)
        self.stop = threading.Event()
        self.captures: list[CameraCapture] = []
        self.threads: list[threading.Thread] = []
        outbound = {topic.name: topic for topic in role_view(NodeRole.CAMERA, config).publishes}
        self.publishers_ = {
            c.name: (create_publisher(self, outbound[c.topic]), create_publisher(self, outbound[info_topic(c)]))
            for c in cameras
        }
        for camera in cameras:
            capture = CameraCapture(camera, open_source, self._publish, self._now_ns, self.get_logger(),
                                    Backoff(min(0.5, retry_max_s), retry_max_s))
            thread = threading.Thread(target=capture.run, args=(self.stop,), name=f"camera_{camera.name}", daemon=True)
            self.captures.append(capture)
            self.threads.append(thread)
        self.heartbeat = Heartbeat(self, runtime.clock_check)
        self.diagnostics = create_publisher(self, DIAGNOSTICS)
        self.create_timer(1.0, self._report)
        for thread in self.threads:
            thread.start()
        self.get_logger().info(
            "serving " + ", ".join(f"{c.name} ({c.source.type}) on {c.topic} {c.width}x{c.height} {c.encoding} "
                                   f"at {c.fps:g} Hz" for c in cameras)
        )

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _publish(self, camera: Camera, image: np.ndarray, stamp_ns: int, intrinsics: Intrinsics | None) -> None:
        frame_id = f"{camera.name}_color_optical_frame"
        image_pub, info_pub = self.publishers_[camera.name]
        image_pub.publish(image_to_msg(image, camera.encoding, stamp_ns, frame_id))
        info_pub.publish(camera_info(camera, stamp_ns, frame_id, intrinsics))

    def _report(self) -> None:
        statuses = []
        for capture in self.captures:
            counts = capture.counts
            level = Level.OK if counts.connected else Level.ERROR
            message = "streaming" if counts.connected else f"disconnected: {counts.last_error}"
            values = {"frames": counts.frames, "lost": counts.lost, "disconnects": counts.disconnects,
                      "connect_failures": counts.connect_failures, "connected": int(counts.connected)}
            statuses.append(diagnostic_status(f"camera_node: {capture.camera.name}", message, values, level,
                                              capture.camera.source.type))
        clock = self.heartbeat.figures()
        if clock:
            statuses.append(diagnostic_status("camera_node: clock", "offsets", clock))
        self.diagnostics.publish(diagnostic_array(statuses, self._now_ns()))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5.0)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(CameraNode, args, executor_factory=SingleThreadedExecutor)  # capture runs on its own threads


if __name__ == "__main__":
    raise SystemExit(main())
