"""The README's multi-machine recipe: FastDDS discovery server with the shipped profile."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytestmark = [pytest.mark.ros, pytest.mark.slow]

PARTICIPANT = textwrap.dedent("""
    import sys, time, rclpy
    from std_msgs.msg import String
    from qwen_vla_ros.ros_env import apply_dds_profile
    apply_dds_profile()
    rclpy.init()
    node = rclpy.create_node(sys.argv[1])
    received = []
    if sys.argv[1] == "talker":
        publisher = node.create_publisher(String, "/discovery_server_test", 10)
    else:
        node.create_subscription(String, "/discovery_server_test", lambda m: received.append(m.data), 10)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline and not received:
        if sys.argv[1] == "talker":
            publisher.publish(String(data="hello"))
        rclpy.spin_once(node, timeout_sec=0.1)
    print("received", len(received))
""")


def run_pair(ros_domain, server: str, seconds: float) -> str:
    env = dict(ros_domain.env, ROS_DISCOVERY_SERVER=server)
    env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    talker = subprocess.Popen([sys.executable, "-c", PARTICIPANT, "talker", str(seconds + 2)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        listener = subprocess.run([sys.executable, "-c", PARTICIPANT, "listener", str(seconds)], env=env,
                                  capture_output=True, text=True, timeout=seconds + 60)
    finally:
        talker.kill()
        talker.wait()
    return listener.stdout + listener.stderr


def test_discovery_server_connects_participants_that_use_the_shipped_profile(ros_domain, tmp_path: Path) -> None:
    fastdds = shutil.which("fastdds")
    if fastdds is None:
        pytest.skip("the 'fastdds' tool (Fast DDS discovery server) is not on PATH")
    port = str(11811 + ros_domain.domain_id)
    library_path = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
    # 'fastdds discovery' is a wrapper that starts the server binary: run both in their own
    # process group and stop the group. Fast DDS 2 (Jazzy) requires a server id, and 0 is the
    # id a client gives the first address in ROS_DISCOVERY_SERVER; Fast DDS 3 (Kilted) accepts it.
    server = subprocess.Popen([fastdds, "discovery", "-i", "0", "-l", "127.0.0.1", "-p", port],
                              env=dict(os.environ, LD_LIBRARY_PATH=library_path), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = "".join(server.stdout.readline() for _ in range(3))
        # Fast DDS 3 prints "Server started", Fast DDS 2 "Server is running".
        assert "Server started" in banner or "Server is running" in banner, f"discovery server did not start: {banner}"
        assert "received 1" in run_pair(ros_domain, f"127.0.0.1:{port}", 15)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    # The same pair with no server at that address never meets: discovery really went through it.
    assert "received 0" in run_pair(ros_domain, f"127.0.0.1:{port}", 4)
