"""sim_node over real DDS: a child process simulating the robot, commanded and observed the way
the controller, policy and recorder will."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.nodes.common import time_to_ns  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import msg_to_image  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
FORWARD = "outputs=[{adapter: forward_command, arms: [left, right]}]"
LAYOUT = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper", "left_finger",
          "right_finger"]
CAMERAS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]


def start_sim(ros_domain, *parameters: str) -> subprocess.Popen:
    args = ["-m", "qwen_vla_ros.nodes.sim_node", "--ros-args"]
    for parameter in parameters:
        args += ["-p", parameter]
    return ros_domain.start_process(*args)


def stop(child: subprocess.Popen) -> tuple[int, str]:
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
    try:
        output = child.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        child.kill()
        output = child.communicate()[0]
        return -9, output
    return child.returncode, output


class Probe:
    """An in-test node that keeps the latest message per topic."""

    def __init__(self, ros_domain, name: str) -> None:
        self.ros_domain = ros_domain
        self.node = rclpy.create_node(name, context=ros_domain.context)
        self.executor = SingleThreadedExecutor(context=ros_domain.context)
        self.executor.add_node(self.node)
        self.latest: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def listen(self, message_type: type, topic: str, qos=10) -> None:
        def store(msg: object) -> None:
            self.latest[topic] = msg
            self.counts[topic] = self.counts.get(topic, 0) + 1

        self.node.create_subscription(message_type, topic, store, qos)

    def wait(self, predicate, timeout: float) -> bool:
        return self.ros_domain.spin_until(self.executor, predicate, timeout)

    def call(self, service_type: type, name: str, timeout: float = 10.0):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"{name} not offered"
        future = client.call_async(service_type.Request())
        assert self.wait(future.done, timeout), f"{name} did not answer"
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()


def test_aloha_sim_tracks_forward_commands_publishes_cameras_and_resets(ros_domain) -> None:
    child = start_sim(
        ros_domain, "config:=aloha", "seed:=3", "camera_rate_hz:=5.0",
        f"config_overrides:=['{FORWARD}', 'sim.render_width=160', 'sim.render_height=120']",
    )
    probe = Probe(ros_domain, "sim_probe")
    try:
        for arm in ("left", "right"):
            probe.listen(JointState, f"/follower_{arm}/joint_states")
        for camera in CAMERAS:
            probe.listen(Image, f"/{camera}/camera/color/image_rect_raw", qos_profile_sensor_data)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        probe.listen(Bool, "/qwen_vla/sim/success", latched)
        probe.listen(DiagnosticArray, "/diagnostics")
        command = probe.node.create_publisher(Float64MultiArray, "/follower_left/forward_position_controller/commands", 10)
        assert probe.wait(lambda: "/follower_left/joint_states" in probe.latest, 30), "no joint states from sim_node"

        left = probe.latest["/follower_left/joint_states"]
        assert list(left.name) == LAYOUT
        np.testing.assert_allclose(left.position[:6], [0, -0.96, 1.16, 0, -0.3, 0], atol=0.02)
        now_ns = probe.node.get_clock().now().nanoseconds
        assert abs(time_to_ns(left.header.stamp) - now_ns) < 1e9, "stamps must be ROS times of the sim instants"

        target = [0.3, -0.5, 0.8, 0.2, -0.2, 0.4, 1.2]
        assert probe.wait(lambda: command.get_subscription_count() > 0, 10), "sim_node does not listen for commands"

        def diagnostic(key: str) -> str | None:
            array = probe.latest.get("/diagnostics")
            values = {k.key: k.value for s in array.status for k in s.values} if array is not None else {}
            return values.get(key)

        # Wrong length: rejected, counted, harmless. A matched subscription may still miss the
        # first message while its reader finishes discovery, so send it until the count shows it.
        malformed_sent: list[float] = []

        def malformed_counted() -> bool:
            if not malformed_sent or time.monotonic() - malformed_sent[-1] > 0.5:
                command.publish(Float64MultiArray(data=[0.0] * 6))
                malformed_sent.append(time.monotonic())
            return diagnostic("commands_rejected") not in (None, "0")

        assert probe.wait(malformed_counted, 20), "the malformed command must be counted in /diagnostics"

        def converged() -> bool:
            command.publish(Float64MultiArray(data=target))
            state = probe.latest["/follower_left/joint_states"]
            return bool(np.abs(np.subtract(state.position[:7], target)).max() < 0.03)

        assert probe.wait(converged, 20), f"left arm at {probe.latest['/follower_left/joint_states'].position}"
        # The targets still in flight land before the reset (one arriving after it would move the
        # arm away again): wait until the sim's count of accepted commands stops changing.
        counts: list[tuple[float, str | None]] = []

        def settled() -> bool:
            counts.append((time.monotonic(), diagnostic("commands_accepted")))
            earlier = [count for stamp, count in counts if stamp < counts[-1][0] - 1.5]
            return bool(earlier) and earlier[-1] == counts[-1][1]

        assert probe.wait(settled, 10), counts[-1]
        right = probe.latest["/follower_right/joint_states"]
        np.testing.assert_allclose(right.position[:6], [0, -0.96, 1.16, 0, -0.3, 0], atol=0.02)

        topics = [f"/{c}/camera/color/image_rect_raw" for c in CAMERAS]
        assert probe.wait(lambda: all(t in probe.latest for t in topics), 20), f"cameras seen: {list(probe.counts)}"
        for topic in topics:
            image = msg_to_image(probe.latest[topic])
            assert image.shape == (120, 160, 3) and probe.latest[topic].encoding == "rgb8"
            assert image.std() > 1, f"{topic} is blank"
        assert probe.wait(lambda: "/qwen_vla/sim/success" in probe.latest, 5)
        assert probe.latest["/qwen_vla/sim/success"].data is False

        answer = probe.call(Trigger, "/qwen_vla/sim/reset")
        assert answer.success
        conditions = json.loads(answer.message)
        assert conditions["seed"] == 3 and conditions["reset"] == 1 and len(conditions["object_pose"]) == 4

        def back_at_start() -> bool:
            state = probe.latest["/follower_left/joint_states"]
            return bool(np.abs(np.subtract(state.position[:6], [0, -0.96, 1.16, 0, -0.3, 0])).max() < 0.02)

        assert probe.wait(back_at_start, 5), "reset must return the arms to the start pose"

        rejected = int(diagnostic("commands_rejected"))
        assert 1 <= rejected <= len(malformed_sent), f"{rejected} rejected of {len(malformed_sent)} malformed sent"
        assert int(diagnostic("commands_accepted")) > 0
        values = {k.key: k.value for k in probe.latest["/diagnostics"].status[0].values}
        assert float(values["real_time_factor_total"]) > 0.5
    finally:
        probe.close()
        code, output = stop(child)
    assert code == 0 and "Traceback" not in output, output
    assert "ignored command" in output and "needs 7 values" in output
    assert "real-time factor" in output


def test_widowx_mock_hardware_follows_joint_trajectories_on_sim_time(ros_domain) -> None:
    """Free-running (realtime:=false): /clock carries sim time and the state is stamped with it."""
    child = start_sim(
        ros_domain, "config:=widowx", "realtime:=false", "camera_rate_hz:=0.0",
        "config_overrides:=['outputs=[{adapter: joint_trajectory, arms: [arm]}]']",
    )
    probe = Probe(ros_domain, "widowx_probe")
    try:
        probe.listen(JointState, "/wx250s/joint_states")
        probe.listen(Clock, "/clock")
        command = probe.node.create_publisher(JointTrajectory, "/wx250s/arm_controller/joint_trajectory", 10)
        target = {"waist": 0.4, "elbow": 0.2, "gripper": -0.6}
        msg = JointTrajectory(joint_names=list(target), points=[JointTrajectoryPoint(positions=list(target.values()))])

        def arrived() -> bool:
            command.publish(msg)
            state = probe.latest.get("/wx250s/joint_states")
            if state is None:
                return False
            position = dict(zip(state.name, state.position))
            return all(abs(position[k] - v) < 1e-6 for k, v in target.items())

        assert probe.wait(arrived, 30)
        state = probe.latest["/wx250s/joint_states"]
        assert list(state.name) == LAYOUT
        assert dict(zip(state.name, state.position))["left_finger"] == pytest.approx(0.015)
        first = time_to_ns(probe.latest["/clock"].clock)
        assert probe.wait(lambda: time_to_ns(probe.latest["/clock"].clock) > first + 10**9, 10), "sim time must advance"
    finally:
        probe.close()
        code, output = stop(child)
    assert code == 0 and "Traceback" not in output, output


def test_mobile_base_integrates_cmd_vel_and_stops_after_the_timeout(ros_domain) -> None:
    child = start_sim(ros_domain, "config:=mobile_base", "camera_rate_hz:=5.0")
    probe = Probe(ros_domain, "base_probe")
    try:
        probe.listen(Odometry, "/mobile_base/odom")
        probe.listen(Image, "/camera/camera/color/image_raw", qos_profile_sensor_data)
        cmd_vel = probe.node.create_publisher(Twist, "/mobile_base/cmd_vel", 10)
        assert probe.wait(lambda: "/mobile_base/odom" in probe.latest, 30), "no odometry from sim_node"
        twist = Twist()
        twist.linear.x = 0.4

        def moving() -> bool:
            cmd_vel.publish(twist)
            return probe.latest["/mobile_base/odom"].twist.twist.linear.x == pytest.approx(0.4)

        assert probe.wait(moving, 10)
        # No more commands: the base stops (300 ms timeout, then 1 m/s^2 braking).
        assert probe.wait(lambda: probe.latest["/mobile_base/odom"].twist.twist.linear.x == 0.0, 5)
        odom = probe.latest["/mobile_base/odom"]
        assert odom.pose.pose.position.x > 0.1 and odom.header.frame_id == "odom"
        assert probe.wait(lambda: "/camera/camera/color/image_raw" in probe.latest, 10)
        assert msg_to_image(probe.latest["/camera/camera/color/image_raw"]).shape == (240, 320, 3)
    finally:
        probe.close()
        code, output = stop(child)
    assert code == 0 and "Traceback" not in output, output


def test_aloha_sim_follows_interbotix_group_and_gripper_commands(ros_domain, interbotix_msgs) -> None:
    """The shipped ALOHA config commands through Interbotix topics, with the real message types
    (installed, or built from qwen_vla_ros/interfaces where no Interbotix workspace exists)."""
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

    child = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p", "config:=aloha", "-p", "camera_rate_hz:=0.0",
        env=interbotix_msgs.environment(ros_domain.env),
    )
    probe = Probe(ros_domain, "interbotix_probe")
    try:
        probe.listen(JointState, "/follower_right/joint_states")
        group = probe.node.create_publisher(JointGroupCommand, "/follower_right/commands/joint_group", 10)
        single = probe.node.create_publisher(JointSingleCommand, "/follower_right/commands/joint_single", 10)
        assert probe.wait(lambda: "/follower_right/joint_states" in probe.latest, 30), "no joint states from sim_node"
        start_finger = probe.latest["/follower_right/joint_states"].position[7]
        gripper = load_embodiment("aloha").arm("right").gripper
        target = [-0.3, -0.6, 0.9, -0.2, 0.1, -0.4]
        open_motor = gripper.joint_open  # the Interbotix gripper command is the motor angle

        def converged() -> bool:
            group.publish(JointGroupCommand(name="arm", cmd=target))
            single.publish(JointSingleCommand(name="gripper", cmd=open_motor))
            position = probe.latest["/follower_right/joint_states"].position
            return bool(np.abs(np.subtract(position[:6], target)).max() < 0.03)

        assert probe.wait(converged, 20), f"right arm at {probe.latest['/follower_right/joint_states'].position}"
        finger = lambda: probe.latest["/follower_right/joint_states"].position[7]  # noqa: E731
        assert probe.wait(lambda: abs(finger() - gripper.finger_open) < 0.003, 10), \
            f"the gripper command must open the fingers: from {start_finger} to {finger()}, open is {gripper.finger_open}"
    finally:
        probe.close()
        code, output = stop(child)
    assert code == 0 and "Traceback" not in output, output


def without_built_interfaces(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the folders an earlier test put on PYTHONPATH for built message packages."""
    result = dict(env)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "interbotix_xs_msgs").is_dir()]
    result["PYTHONPATH"] = os.pathsep.join(kept)
    return result


def test_interbotix_outputs_without_the_messages_exit_with_the_override_to_use(ros_domain) -> None:
    env = without_built_interfaces(ros_domain.env)
    probe = subprocess.run([sys.executable, "-c", "import interbotix_xs_msgs"], env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("interbotix_xs_msgs is installed here, so the sim subscribes to the Interbotix topics")
    child = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p", "config:=aloha", "-p", "camera_rate_hz:=0.0", env=env,
    )
    child.wait(timeout=60)
    code, output = stop(child)
    assert code == 2, output
    assert "interbotix_xs_msgs is not importable" in output
    assert FORWARD in output


def test_randomisation_topic_sets_the_next_resets_and_bad_fields_are_refused(ros_domain) -> None:
    """An evaluation level's fields (latched topic) apply from the next reset, which echoes them;
    an unknown field is refused, resets fail with the reason until good fields arrive, the node runs on."""
    from std_msgs.msg import String

    child = start_sim(ros_domain, "config:=aloha", "seed:=5", "camera_rate_hz:=0.0", f"config_overrides:=['{FORWARD}']")
    probe = Probe(ros_domain, "randomisation_probe")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher = probe.node.create_publisher(String, "/qwen_vla/sim/randomization", latched)
    try:
        assert probe.wait(lambda: publisher.get_subscription_count() > 0, 30), "sim_node does not listen"

        def reset_echoes(fields: dict) -> dict | None:
            answer = probe.call(Trigger, "/qwen_vla/sim/reset")
            drawn = json.loads(answer.message) if answer.success else None
            return drawn if drawn is not None and drawn["randomization"] == fields else None

        blue = {"object_rgb": [[0.0, 0.1], [0.0, 0.1], [0.9, 1.0]], "object_x": [-0.05, -0.04], "distractor": True}
        publisher.publish(String(data=json.dumps(blue)))
        drawn = None
        for _ in range(20):
            drawn = reset_echoes(blue)
            if drawn:
                break
            time.sleep(0.2)
        assert drawn, "the reset never applied the published fields"
        assert -0.05 <= drawn["object_pose"][0] <= -0.04 and drawn["object_rgb"][2] >= 0.9 and "distractor_xy" in drawn

        publisher.publish(String(data=json.dumps({"object_colour": [1, 0, 0]})))
        refused = None
        for _ in range(20):
            answer = probe.call(Trigger, "/qwen_vla/sim/reset")
            if not answer.success:
                refused = answer.message
                break
            time.sleep(0.2)
        assert refused is not None and "object_colour" in refused
        publisher.publish(String(data="{}"))  # back to the config's randomisation
        for _ in range(20):
            drawn = reset_echoes({})
            if drawn:
                break
            time.sleep(0.2)
        assert drawn and "object_rgb" not in drawn and child.poll() is None
    finally:
        probe.close()
        code, output = stop(child)
    assert code == 0, output[-2000:]
