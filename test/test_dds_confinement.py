"""One host means one host: in single-host mode no other network namespace reaches the robot.

A network namespace joined to this host by a veth pair stands for another machine on the
robot's network. Its process (``helpers/network_peer.py``: stock ROS 2 settings, its own
``/dev/shm`` as a separate machine has) points ``ROS_STATIC_PEERS`` at the host's end of the
pair, as the peer that once took the robot over did. The robot side is the real base
controller, started by the bringup runner from the graph description (so with exactly the
environment ``up`` gives it), fed by a stand-in base driver in this process (the motors cannot
exist here), which also watches the mode, the e-stop and the commands. The same peer against
multi-host mode does reach the controller: that proves the test can fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from helpers.dds_robots import TwistBase  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402

from qwen_vla_ros.bringup.graph import BringupOptions, build_graph  # noqa: E402
from qwen_vla_ros.bringup.runner import ProcessGroup  # noqa: E402
from qwen_vla_ros.config.embodiment import TwistOutput  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
PEER = Path(__file__).resolve().parent / "helpers" / "network_peer.py"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
MODE_TOPIC, ESTOP_TOPIC = "/qwen_vla/mode", "/qwen_vla/estop"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


@contextmanager
def peer_namespace() -> Iterator[tuple[str, str]]:
    """(namespace, host address): a namespace joined to this host by a veth pair, removed afterwards.

    Only addresses inside that pair are used (10.213.x.0/24, x from the pid so parallel runs
    do not collide); deleting the namespace deletes the pair.
    """
    if shutil.which("ip") is None:
        pytest.skip("the 'ip' tool (iproute2) is not installed, so no network namespace can be made")
    tag = os.getpid() % 100000
    namespace, host_if, peer_if, subnet = f"qvsec{tag}", f"qvh{tag}", f"qvp{tag}", f"10.213.{tag % 250}"
    steps = [
        ("netns", "add", namespace),
        ("link", "add", host_if, "type", "veth", "peer", "name", peer_if),
        ("link", "set", peer_if, "netns", namespace),
        ("addr", "add", f"{subnet}.1/24", "dev", host_if),
        ("link", "set", host_if, "up"),
        ("-n", namespace, "addr", "add", f"{subnet}.2/24", "dev", peer_if),
        ("-n", namespace, "link", "set", peer_if, "up"),
        ("-n", namespace, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace here ('ip {' '.join(step)}': {done.stderr.strip()}); "
                            "it needs root or CAP_NET_ADMIN, as CI has")
        yield namespace, f"{subnet}.1"
    finally:
        _ip("link", "del", host_if)
        _ip("netns", "del", namespace)


def run_peer(namespace: str, host_address: str, domain_id: int, home: Path, args: list[str]) -> subprocess.Popen:
    """The peer in ``namespace``, with a private /dev/shm where it may mount one, as a remote machine has.

    Where mounting is not allowed it shares this host's /dev/shm; Fast DDS did not use shared
    memory across network namespaces even then (measured), and if it ever did, the
    single-host assertions would fail rather than pass.
    """
    env = {"PATH": os.environ.get("PATH", ""), "ROS_DOMAIN_ID": str(domain_id), "ROS_STATIC_PEERS": host_address,
           "PYTHONUNBUFFERED": "1", "HOME": str(home), "ROS_LOG_DIR": str(home / "ros_log")}
    script = 'mount -t tmpfs tmpfs /dev/shm 2>/dev/null; exec "$0" "$@"'
    return subprocess.Popen(["ip", "netns", "exec", namespace, "sh", "-c", script, sys.executable, str(PEER), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def attack(ros_domain, namespace: str, host_address: str, home: Path, *, multi_host: bool) -> dict:
    """Bring the controller up in the mode, latch the e-stop, let the peer try; what each side saw."""
    graph = build_graph(BringupOptions("mobile_base", record=False, joystick=False, multi_host=multi_host))
    config = graph.embodiment
    cmd_vel = next(o.topic for o in config.outputs if isinstance(o, TwistOutput))
    node = rclpy.create_node("robot_side", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    base = TwistBase(node, cmd_vel, config.base.odom_topic)
    modes: list[str] = []
    estops: list[bool] = []
    node.create_subscription(String, MODE_TOPIC, lambda m: modes.append(m.data), LATCHED)
    node.create_subscription(Bool, ESTOP_TOPIC, lambda m: estops.append(m.data), LATCHED)
    estop = node.create_publisher(Bool, ESTOP_TOPIC, LATCHED)
    group = ProcessGroup([graph.process("base_controller")], env=ros_domain.env, echo=None)
    peer_output = ""
    try:
        group.start()
        assert ros_domain.spin_until(executor, lambda: modes == ["policy"] and len(base.twists) > 10, timeout=60), \
            f"the controller did not come up: {list(group.children[0].tail)}"
        estop.publish(Bool(data=True))  # the operator's e-stop, pressed here on the robot computer
        assert ros_domain.spin_until(executor, lambda: estops == [True], timeout=5)
        ros_domain.spin_until(executor, lambda: False, timeout=1.0)
        before = len(base.twists)
        peer = run_peer(namespace, host_address, ros_domain.domain_id, home, [
            "15", config.teleop.joy_topic, str(config.teleop.buttons.deadman), str(config.teleop.base.axis_linear),
            MODE_TOPIC, cmd_vel,
        ])
        try:
            ros_domain.spin_until(executor, lambda: peer.poll() is not None, timeout=90)
        finally:
            if peer.poll() is None:
                peer.kill()
            peer_output = peer.communicate(timeout=10)[0]
        ros_domain.spin_until(executor, lambda: False, timeout=1.0)
        lines = [line for line in peer_output.splitlines() if line.startswith("{")]
        assert lines, f"the peer printed no result: {peer_output}"
        return {"peer": json.loads(lines[-1]), "modes": list(modes), "estops": list(estops),
                "linear": [m.linear.x for _, m in base.twists[before:]]}
    finally:
        exits = group.stop()
        node.destroy_node()
        for ended in exits:
            assert ended.returncode in (0, -2) and not any("Traceback" in line for line in ended.tail), ended.describe()


def test_single_host_mode_keeps_another_machine_out_and_multi_host_lets_it_in(ros_domain, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a network namespace and mounting the peer's /dev/shm needs root (CI runs as root)")
    with peer_namespace() as (namespace, host_address):
        confined = attack(ros_domain, namespace, host_address, tmp_path, multi_host=False)
        peer = confined["peer"]
        own = {"/joy", "/rosout", "/parameter_events"}  # the peer's own publishers
        assert set(peer["topics"]) <= own, f"the peer discovered the robot's topics: {peer['topics']}"
        robot_services = [name for name in peer["services"] if not name.startswith("/network_peer/")]
        assert robot_services in ([], ["/qwen_vla/estop/reset"]), "only the peer's own nodes and client"
        assert peer["reset"] == "unavailable" and peer["joy_subscribers"] == 0
        assert confined["estops"] == [True], "the e-stop stays latched"
        assert confined["modes"] == ["policy"], "the deadman press changed nothing"
        assert confined["linear"] and max(map(abs, confined["linear"])) == 0.0, "commands unchanged (still zero)"

        exposed = attack(ros_domain, namespace, host_address, tmp_path, multi_host=True)
        peer = exposed["peer"]
        assert {MODE_TOPIC, "/qwen_vla/controller/command"} <= set(peer["topics"]), peer
        assert peer["reset"].startswith("answered") and exposed["estops"][-1] is False, "the peer reset the e-stop"
        assert "teleop" in exposed["modes"], "the peer took over with the deadman"
        assert max(exposed["linear"]) > 0.0, "and drove the base"
