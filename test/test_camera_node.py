"""camera_node as a process over real DDS: a video file, an image folder and a RealSense
recording publish; an absent RealSense device is retried without stopping the others; a
peer whose heartbeat clock is off is reported."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.media import level, write_folder, write_realsense_recording, write_video

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, TimeReference  # noqa: E402

from qwen_vla_ros.nodes.common import ns_to_time, time_to_ns  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import msg_to_image  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
W, H = 64, 48
CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


def test_camera_node_serves_every_source_and_survives_a_missing_device(ros_domain, tmp_path: Path) -> None:
    import rclpy

    try:
        import pyrealsense2  # noqa: F401

        recording = write_realsense_recording(tmp_path / "take.db3", 6, W, H)
        bag_source = f"{{type: bag, path: {recording}}}"
    except ImportError:
        pytest.skip("pyrealsense2 cannot be imported: pip install pyrealsense2 (and apt install libusb-1.0-0)")
    sources = {
        "cam_high": f"{{type: video, path: {write_video(tmp_path / 'clip.avi', 8, W, H)}}}",
        "cam_low": f"{{type: video, path: {write_folder(tmp_path / 'frames', 5, W, H)}}}",
        "cam_left_wrist": bag_source,
        "cam_right_wrist": "{type: realsense, serial: '000000000000'}",
    }
    overrides = [f"cameras.{i}.source={sources[name]}" for i, name in enumerate(CAMERAS)]
    overrides += [f"cameras.{i}.{key}={value}" for i in range(4) for key, value in (("width", W), ("height", H))]
    overrides += ["cameras.1.encoding=bgr8", "cameras.0.fps=20"]

    node = rclpy.create_node("camera_listener", context=ros_domain.context)
    images: dict[str, list[tuple[int, int, str, int, int]]] = {name: [] for name in CAMERAS}
    infos: dict[str, list[CameraInfo]] = {name: [] for name in CAMERAS}
    stamps: dict[str, list[int]] = {name: [] for name in CAMERAS}

    def on_image(name: str, msg: Image) -> None:
        pixels = msg_to_image(msg)
        stamp = time_to_ns(msg.header.stamp)
        images[name].append((msg.width, msg.height, msg.encoding, int(round(pixels[: H // 2].mean())),
                             stamp - node.get_clock().now().nanoseconds))
        stamps[name].append(stamp)

    for name in CAMERAS:
        node.create_subscription(Image, f"/{name}/camera/color/image_rect_raw", lambda m, n=name: on_image(n, m),
                                 qos_profile_sensor_data)
        node.create_subscription(CameraInfo, f"/{name}/camera/color/camera_info",
                                 lambda m, n=name: infos[n].append(m), qos_profile_sensor_data)
    diagnostics: dict[str, dict[str, str]] = {}
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.update(
        {s.name: {"message": s.message, **{v.key: v.value for v in s.values}} for s in m.status}), 10)
    logs: list[str] = []
    rosout = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(Log, "/rosout", lambda m: logs.append(m.msg), rosout)
    heartbeat = node.create_publisher(TimeReference, "/qwen_vla/heartbeat", 10)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)

    def beat() -> None:  # a peer on another host (one on this host shares its clock) 200 ms behind
        message = TimeReference(source="remote-gpu-host/slow_clock")
        message.header.stamp = ns_to_time(node.get_clock().now().nanoseconds - 200_000_000)
        heartbeat.publish(message)

    node.create_timer(0.2, beat)
    parameters = tmp_path / "camera_node.yaml"
    parameters.write_text(yaml.safe_dump(
        {"camera_node": {"ros__parameters": {"config_overrides": overrides, "retry_max_s": 0.5}}}))
    child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.camera_node", "--ros-args", "--params-file", str(parameters))
    try:
        def done() -> bool:
            status = diagnostics.get("camera_node: cam_right_wrist", {})
            return (all(len(images[n]) >= 12 for n in CAMERAS[:3]) and int(status.get("connect_failures", 0)) >= 3
                    and "clock_offset_ms.remote-gpu-host/slow_clock" in diagnostics.get("camera_node: clock", {})
                    and offset_warned())

        def offset_warned() -> bool:  # /rosout and /diagnostics are separate topics: either may arrive first
            return any("clock offset over 10 ms" in line and "slow_clock" in line for line in logs)

        ros_domain.spin_until(executor, lambda: done() or child.poll() is not None, timeout=60)
        alive = child.poll() is None
    finally:
        child.terminate()
        output = child.communicate(timeout=20)[0]
        node.destroy_node()
    assert alive, f"camera_node exited:\n{output}"
    assert done(), f"images {[len(v) for v in images.values()]}, diagnostics {diagnostics}\n{output}"

    for name, count in (("cam_high", 8), ("cam_low", 5), ("cam_left_wrist", 6)):
        received = images[name]
        assert {(w, h) for w, h, *_ in received} == {(W, H)}
        indices = [round((g - level(0)) / (level(1) - level(0))) for *_, g, _ in received]
        # frames in file order, looped (the subscriber may miss one, never reorder)
        steps = {(b - a) % count for a, b in zip(indices, indices[1:])}
        assert steps <= {1, 2}, f"{name}: frame indices {indices}"
        assert all(abs(age) < 1e9 for *_, age in received), f"{name}: stamps are not capture times in ROS time"
        gaps = [(b - a) / 1e9 for a, b in zip(stamps[name], stamps[name][1:])]
        assert max(gaps) < 2.0, f"{name} stalled for {max(gaps):.1f} s while the missing device was retried"
    assert {e for _, _, e, _, _ in images["cam_low"]} == {"bgr8"} and {e for _, _, e, _, _ in images["cam_high"]} == {"rgb8"}
    assert images["cam_right_wrist"] == []
    assert infos["cam_left_wrist"][0].k[0] == pytest.approx(W), "intrinsics from the recording"
    assert infos["cam_high"][0].k[0] == 0.0, "a video has no calibration: K stays zero"
    assert time_to_ns(infos["cam_high"][0].header.stamp) > 0
    missing = diagnostics["camera_node: cam_right_wrist"]
    assert missing["connected"] == "0" and "000000000000 is not connected" in missing["message"]
    assert diagnostics["camera_node: cam_high"]["connected"] == "1"
    offset = float(diagnostics["camera_node: clock"]["clock_offset_ms.remote-gpu-host/slow_clock"])
    assert 195 < offset < 400
    assert offset_warned(), logs[-5:]


def test_camera_node_rejects_topic_sources_and_unknown_cameras(ros_domain) -> None:
    for parameters, words in (
        (["-p", "cameras:=['cam_high']"], ["cam_high", "source 'topic'"]),
        (["-p", "cameras:=['cam_nope']"], ["unknown cameras ['cam_nope']"]),
        ([], ["no camera with a realsense, bag or video source"]),
    ):
        child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.camera_node", "--ros-args", *parameters)
        output = child.communicate(timeout=60)[0]
        assert child.returncode == 2, output
        assert all(w in output for w in words), output
