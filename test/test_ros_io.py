"""Message conversions shared by all nodes, and the shipped DDS profile carrying camera frames."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

HELPERS = Path(__file__).parent / "helpers"
pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from qwen_vla_ros.chunk import ActionChunk  # noqa: E402
from qwen_vla_ros.errors import MalformedMessageError  # noqa: E402
from qwen_vla_ros.nodes.common import low_latency_spinner, seconds_to_duration, spin_until_shutdown  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import (  # noqa: E402
    chunk_to_trajectory,
    image_to_msg,
    msg_to_image,
    trajectory_to_chunk,
)


def test_chunk_round_trip_keeps_contract() -> None:
    rng = np.random.default_rng(0)
    chunk = ActionChunk(rng.normal(size=(50, 14)), tuple(f"c{i}" for i in range(14)), 0.02, 1_700_000_000_123_456_789)
    msg = chunk_to_trajectory(chunk)
    assert msg.header.stamp.sec == 1_700_000_000 and msg.header.stamp.nanosec == 123_456_789
    assert msg.points[49].time_from_start.sec == 0 and msg.points[49].time_from_start.nanosec == 980_000_000
    back = trajectory_to_chunk(msg, default_dt=0.1)
    np.testing.assert_array_equal(back.actions, chunk.actions)
    assert back.channel_names == chunk.channel_names
    assert back.stamp_ns == chunk.stamp_ns
    assert back.dt == pytest.approx(0.02)
    assert back.due_ns(10) == chunk.stamp_ns + 200_000_000


def test_unstamped_chunk_is_not_published() -> None:
    with pytest.raises(ValueError, match="stamped"):
        chunk_to_trajectory(ActionChunk(np.zeros((2, 2)), ("a", "b"), 0.1))


def _trajectory(rows: list[list[float]], times: list[float]) -> JointTrajectory:
    msg = JointTrajectory(joint_names=["a", "b"])
    msg.points = [JointTrajectoryPoint(positions=r, time_from_start=seconds_to_duration(t)) for r, t in zip(rows, times)]
    return msg


@pytest.mark.parametrize(
    "rows, times, message",
    [
        ([], [], "no points"),
        ([[0.0, 1.0], [0.0]], [0.0, 0.1], "different lengths"),
        ([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], [0.0, 0.1, 0.3], "not evenly spaced"),
        ([[0.0, 1.0], [0.0, 1.0]], [0.1, 0.2], "time_from_start 0"),
    ],
)
def test_structurally_broken_chunks_raise(rows, times, message) -> None:
    with pytest.raises(MalformedMessageError, match=message):
        trajectory_to_chunk(_trajectory(rows, times), default_dt=0.02)


def test_single_point_chunk_takes_default_dt_and_nonpositive_dt_passes_to_core() -> None:
    assert trajectory_to_chunk(_trajectory([[1.0, 2.0]], [0.0]), default_dt=0.02).dt == 0.02
    # Zero spacing is a value problem the control core counts and rejects, not a decoding error.
    assert trajectory_to_chunk(_trajectory([[1.0, 2.0], [1.0, 2.0]], [0.0, 0.0]), default_dt=0.02).dt == 0.0


@pytest.mark.parametrize("encoding, shape", [("rgb8", (48, 64, 3)), ("bgr8", (48, 64, 3)), ("mono8", (48, 64))])
def test_image_round_trip(encoding: str, shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(0, 255, size=shape, dtype=np.uint8)
    msg = image_to_msg(image, encoding, 5, "cam")
    assert isinstance(msg.data, (bytes, bytearray)) or msg.data.typecode == "B"
    view = msg_to_image(msg)
    np.testing.assert_array_equal(view, image)
    assert view.base is not None, "decoding must be a view on the message buffer, not a copy"


def test_image_with_row_padding_is_cropped_by_step() -> None:
    msg = Image(height=2, width=2, encoding="rgb8", step=8)
    msg.data = bytes([1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99])
    np.testing.assert_array_equal(msg_to_image(msg), [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]])


def test_bad_images_are_clear_errors() -> None:
    with pytest.raises(MalformedMessageError, match="unsupported image encoding '16UC1'"):
        msg_to_image(Image(height=1, width=1, encoding="16UC1", step=2, data=bytes(2)))
    with pytest.raises(MalformedMessageError, match="buffer too small"):
        msg_to_image(Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(10)))
    with pytest.raises(ValueError, match="uint8"):
        image_to_msg(np.zeros((4, 4, 3), np.float32), "rgb8", 0)


@pytest.mark.ros
@pytest.mark.slow
def test_shipped_dds_profile_delivers_camera_frames_between_processes(ros_domain) -> None:
    """640x480 BEST_EFFORT frames between processes: dropped ~99% without the SHM profile."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    node = rclpy.create_node("image_listener", context=ros_domain.context)
    received: list[int] = []
    node.create_subscription(Image, "/cam_test/image", lambda m: received.append(int(msg_to_image(m)[0, 0, 0])),
                             qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    count = 60
    child = ros_domain.start_process(str(HELPERS / "publish_images.py"), "/cam_test/image", str(count), "30")
    try:
        ros_domain.spin_until(executor, lambda: len(received) >= count or child.poll() is not None, timeout=40)
        ros_domain.spin_until(executor, lambda: len(received) >= count, timeout=1.0)
    finally:
        child.kill()
        output = child.communicate()[0]
        node.destroy_node()
    assert len(received) >= count * 0.95, f"received {len(received)}/{count}; publisher said:\n{output}"
    assert received == sorted(received), "frames arrived out of order"


def test_events_executor_fires_timers_and_subscriptions_and_stops_at_shutdown(ros_domain) -> None:
    """The controller's spinner: rclpy 9.1.2's EventsExecutor.spin() never fires timers, so
    spin_until_shutdown loops spin_once; both kinds of callback must run, and the loop must end
    once the context shuts down (as SIGTERM does)."""
    pytest.importorskip("rclpy.experimental", reason="this rclpy has no EventsExecutor (rclpy < 9): the controller "
                        "uses the yielding multi-threaded executor instead")
    from rclpy.exceptions import InvalidHandle
    from std_msgs.msg import String

    context = ros_domain.context
    node = rclpy.create_node("spinner_probe", context=context)
    ticks, heard = [], []
    publisher = node.create_publisher(String, "/spinner_probe", 10)
    node.create_subscription(String, "/spinner_probe", heard.append, 10)

    def tick() -> None:
        ticks.append(1)
        # context.shutdown() destroys this node from the shutdown's thread, so a tick may publish then.
        with contextlib.suppress(InvalidHandle):
            publisher.publish(String(data="tick"))

    node.create_timer(0.02, tick)
    spinner = low_latency_spinner(threads=2, context=context)
    assert type(spinner).__name__ == "EventsExecutor"
    spinner.add_node(node)
    threading.Timer(1.0, context.shutdown).start()
    started = time.monotonic()
    with contextlib.suppress(ExternalShutdownException):  # what rclpy's own executors raise there too
        spin_until_shutdown(spinner, context)
    assert time.monotonic() - started < 3.0, "spinning ended with the shutdown"
    assert len(ticks) >= 25, f"a 50 Hz timer fired {len(ticks)} times in 1 s"
    assert len(heard) >= 20, f"{len(heard)} messages heard"
    node.destroy_node()


def test_low_latency_spinner_falls_back_where_rclpy_has_no_events_executor(ros_domain, monkeypatch) -> None:
    """Humble and Jazzy's rclpy have no rclpy.experimental: the controller must still start, on the
    yielding multi-threaded executor. The missing module is simulated (those distributions cannot be installed here)."""
    from qwen_vla_ros.nodes.common import YieldingMultiThreadedExecutor

    monkeypatch.setitem(sys.modules, "rclpy.experimental", None)  # makes the import raise ImportError
    spinner = low_latency_spinner(threads=3, context=ros_domain.context)
    assert isinstance(spinner, YieldingMultiThreadedExecutor)
    spinner.shutdown()


def test_spinning_ends_soon_after_shutdown_even_when_the_wake_up_is_missed(ros_domain) -> None:
    """A joystick node with no pad ignored SIGTERM for 10 s in CI: its wait never saw the shutdown.
    The missed wake-up cannot be produced on demand, so a stand-in spinner plays it: each wait
    sleeps its whole timeout and no shutdown ever interrupts it (no timeout: 5 s, "forever")."""
    from qwen_vla_ros.nodes.common import SHUTDOWN_CHECK_S

    class DeafSpinner:
        def spin_once(self, timeout_sec: float | None = None) -> None:
            time.sleep(5.0 if timeout_sec is None else timeout_sec)

    threading.Timer(0.3, ros_domain.context.shutdown).start()
    started = time.monotonic()
    spin_until_shutdown(DeafSpinner(), ros_domain.context)  # type: ignore[arg-type]  # spin_once is all it uses
    took = time.monotonic() - started
    assert took < 0.3 + SHUTDOWN_CHECK_S + 0.5, f"spinning went on {took:.2f} s after a shutdown at 0.3 s"
    assert SHUTDOWN_CHECK_S <= 0.5, "a missed wake-up may cost at most half a second"
