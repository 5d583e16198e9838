"""Takeover latency: from a Joy message with the deadman pressed to the first teleop command on the driver topic.

    python bench/teleop_latency.py [--embodiment mobile_base|widowx|aloha] [--trials 100]

The real controller node runs as a child process (arms on the ``forward_command`` adapter, so
no extra message package is needed). This process plays the robot (odometry or joint states
that follow the commands, 50 Hz) and the operator: each trial starts in ``hold``, publishes
one Joy with the deadman held and a stick deflected, and waits for the first command that
shows the operator in control: for a base the first Twist (a held base sends none) with
``linear.x > 0``; for an arm the first driver command that differs from the held one. The
latency is measured in this process from just before ``publish`` to the receiving callback
(a dedicated spin thread), so it includes DDS in both directions. Trials start at random
phases of the control timer. Meanwhile a policy publishes action chunks at ``--chunk-hz``
(5 Hz by default; small random actions): the controller prepares each one (IK for WidowX
deltas) before refusing it while not in ``policy`` mode, so a takeover competes with that
work as it does on a robot whose policy keeps running. The goal is one control period: the switch happens in the Joy
callback, which wakes the control loop to run a period at once (off the grid, limited over
the time it covers), so the latency is transport and scheduling, not a wait for the next
period. Also reported: the same for the ``teleop`` message on
``/qwen_vla/mode`` (published from the Joy callback), and for arms how many held commands
still arrived after the Joy (0: the very next command was the operator's). Prints one JSON
object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qwen_vla_ros.ros_env import apply_dds_profile, with_dds_profile  # noqa: E402

STICK = 1  # joy axis: x forward for the arm jog, linear.x for the base


def figures(samples_ms: list[float], period_ms: float) -> dict[str, float]:
    values = np.array(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
        "mean_ms": round(float(values.mean()), 3),
        "within_one_period": round(float(np.mean(values <= period_ms)), 3),
    }


def run(embodiment: str, trials: int, domain: int, chunk_hz: float) -> dict:
    import rclpy
    from geometry_msgs.msg import Twist
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState, Joy
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    from qwen_vla_ros.chunk import ActionChunk
    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.contract import ACTION_CHUNK, MODE
    from qwen_vla_ros.nodes.ros_contract import SUBSCRIPTION_QOS, chunk_to_trajectory

    config = load_embodiment(embodiment)
    overrides = []
    if config.arms:
        overrides = [f"outputs=[{{adapter: forward_command, arms: [{', '.join(a.name for a in config.arms)}]}}]"]
    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", f"config:={embodiment}"]
    if overrides:
        command += ["-p", f"config_overrides:={json.dumps(overrides)}"]

    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("teleop_latency_rig", context=context)
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    lock = threading.Lock()
    state = {"mode": None, "mode_at": 0.0, "waiting": None, "first_at": None, "held": {}, "commands": 0,
             "sent_at": math.inf, "held_after_joy": 0}
    robot = {"joints": {}, "v": 0.0, "w": 0.0, "x": 0.0, "yaw": 0.0}

    def first_teleop_command(moved: bool, counted: bool = True) -> None:
        """``counted``: this message stands for one control period (one arm's, for several arms)."""
        now = time.perf_counter()
        with lock:
            state["commands"] += 1
            if state["waiting"] is not None and state["first_at"] is None:
                if moved:
                    state["first_at"] = now
                elif counted and now > state["sent_at"]:
                    state["held_after_joy"] += 1

    def on_twist(message: Twist) -> None:
        robot["v"], robot["w"] = message.linear.x, message.angular.z
        first_teleop_command(message.linear.x > 0.0)

    def on_arm(name: str, message: Float64MultiArray) -> None:
        values = tuple(message.data)
        robot["joints"][name] = values
        with lock:
            held = state["held"].get(name)
            if state["waiting"] is None:
                state["held"][name] = values
        first_teleop_command(held is not None and values != held, counted=name == config.arms[0].name)

    def on_mode(message: String) -> None:
        with lock:
            state["mode"], state["mode_at"] = message.data, time.perf_counter()

    def publish_feedback() -> None:
        stamp = node.get_clock().now().to_msg()
        if config.base is not None:
            robot["x"] += robot["v"] * math.cos(robot["yaw"]) * 0.02
            robot["yaw"] += robot["w"] * 0.02
            message = Odometry()
            message.header.stamp = stamp
            message.pose.pose.position.x = robot["x"]
            message.pose.pose.orientation.z, message.pose.pose.orientation.w = math.sin(robot["yaw"] / 2), math.cos(robot["yaw"] / 2)
            odometry.publish(message)
        for arm, publisher in arm_states:
            values = robot["joints"].get(arm.name)
            joints = list(values[:6]) if values else [0.0, -0.5, 0.5, 0.0, 1.0, 0.0]
            motor = values[6] if values else arm.gripper.joint_open
            opening = (motor - arm.gripper.joint_close) / (arm.gripper.joint_open - arm.gripper.joint_close)
            finger = arm.gripper.finger_close + opening * (arm.gripper.finger_open - arm.gripper.finger_close)
            message = JointState(name=[*arm.joint_names, "gripper", "left_finger"], position=[*joints, motor, finger])
            message.header.stamp = stamp
            publisher.publish(message)

    if config.base is not None:
        node.create_subscription(Twist, next(o.topic for o in config.outputs if o.adapter == "twist"), on_twist, reliable)
        odometry = node.create_publisher(Odometry, config.base.odom_topic, 10)
    arm_states = [(arm, node.create_publisher(JointState, arm.joint_state_topic, 10)) for arm in config.arms]
    for arm in config.arms:
        node.create_subscription(Float64MultiArray, f"/{arm.namespace}/forward_position_controller/commands",
                                 lambda m, name=arm.name: on_arm(name, m), reliable)
    node.create_subscription(String, MODE.name, on_mode, SUBSCRIPTION_QOS[MODE.qos])
    joy = node.create_publisher(Joy, config.teleop.joy_topic, 10)
    node.create_timer(0.02, publish_feedback)
    chunks = node.create_publisher(JointTrajectory, ACTION_CHUNK.name, reliable)
    names = tuple(config.action.names)
    lower = np.array([c.limits.lower for c in config.action.channels])
    upper = np.array([c.limits.upper for c in config.action.channels])
    rng = np.random.default_rng(0)

    def publish_chunk() -> None:
        with lock:
            if state["mode"] not in ("hold", "teleop"):  # never while the policy drives: the rig would move
                return
        rows = np.clip(rng.uniform(-0.01, 0.01, size=(config.control.chunk_length, len(names))), lower, upper)
        stamp = node.get_clock().now().nanoseconds
        chunks.publish(chunk_to_trajectory(ActionChunk(rows, names, config.control.action_dt, stamp)))

    if chunk_hz > 0:
        node.create_timer(1.0 / chunk_hz, publish_chunk)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    buttons = config.teleop.buttons

    def send(deadman: bool) -> float:
        message = Joy(axes=[0.0] * 8, buttons=[0] * 11)
        if deadman:
            message.buttons[buttons.deadman] = 1
            message.axes[STICK] = 1.0
        with lock:
            state["sent_at"] = at = time.perf_counter()
        joy.publish(message)
        return at

    def wait_for(predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if predicate():
                    return True
            time.sleep(0.001)
        return False

    command_latency, mode_latency, held_after_joy = [], [], []
    child = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        if not wait_for(lambda: state["commands"] > 20 and state["mode"] == "policy", 60.0):
            raise RuntimeError(f"the controller is not commanding (exit {child.poll()})")
        for _ in range(trials):
            send(False)  # hold (the first trial: policy -> nothing, the deadman is up)
            if not wait_for(lambda: state["mode"] in ("hold", "policy"), 5.0):
                raise RuntimeError("no hold")
            time.sleep(0.25 + random.uniform(0.0, config.control.period_s))  # settle; random timer phase
            with lock:
                state["first_at"], state["waiting"], state["held_after_joy"] = None, True, 0
            sent = send(True)
            if not wait_for(lambda: state["first_at"] is not None and state["mode"] == "teleop", 5.0):
                raise RuntimeError("no teleop command within 5 s")
            with lock:
                command_latency.append((state["first_at"] - sent) * 1000.0)
                mode_latency.append((state["mode_at"] - sent) * 1000.0)
                held_after_joy.append(state["held_after_joy"])
                state["waiting"] = None
                state["held"] = {}
            send(False)
            wait_for(lambda: state["mode"] == "hold", 5.0)
    finally:
        child.terminate()
        child.wait(timeout=10)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    period_ms = config.control.period_s * 1000.0
    return {
        "embodiment": embodiment,
        "control_period_ms": period_ms,
        "trials": trials,
        "chunk_hz": chunk_hz,
        "joy_to_first_teleop_command": figures(command_latency, period_ms),
        "joy_to_mode_message": figures(mode_latency, period_ms),
        # Arms: periods of hold commands that arrived between the Joy and the first teleop command -> trials.
        # (A held base sends none.)
        "hold_commands_after_joy": dict(zip(*map(lambda a: a.tolist(), np.unique(held_after_joy, return_counts=True))))
        if config.arms else None,
    }


def core_jog_cost(embodiment: str, periods: int = 1000) -> dict[str, float]:
    """Controller.step while the operator jogs to and fro (Cartesian: an IK solve per period), in-process without ROS."""
    from qwen_vla_ros.config import load_embodiment, load_runtime
    from qwen_vla_ros.control import Controller

    controller = Controller(load_embodiment(embodiment), load_runtime())
    layout = controller.layout
    positions = np.zeros(len(layout))
    for arm in layout.arms:
        positions[arm.joint_index] = [0.0, -0.5, 0.5, 0.0, 1.0, 0.0]
    buttons = [0] * 11
    buttons[controller.config.teleop.buttons.deadman] = 1
    step_us = []
    now = 10**12
    for period in range(periods):
        now += controller.period_ns
        for arm in layout.arms:
            gripper = arm.gripper
            controller.update_joint_state(arm.name, [*arm.arm.joint_names, gripper.finger_joint],
                                          [*positions[arm.joint_index], gripper.finger_open], now, now)
        if layout.base is not None:
            controller.update_odometry((0.0, 0.0, 0.0), tuple(positions[layout.base.command_index]), now, now)
        axes = [0.0] * 8
        axes[STICK] = axes[4] = 1.0 if (period // 50) % 2 == 0 else -1.0  # x and z, reversed every second: in reach
        controller.update_joy(axes, buttons, now)
        start = time.perf_counter()
        output = controller.step(now)
        step_us.append((time.perf_counter() - start) * 1e6)
        positions = output.positions
    return {"step_p50_us": round(float(np.percentile(step_us, 50)), 1), "step_p99_us": round(float(np.percentile(step_us, 99)), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embodiment", default="mobile_base")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--chunk-hz", type=float, default=5.0, help="action chunks per second from a policy (0: none)")
    args = parser.parse_args()
    apply_dds_profile()
    load = [round(v, 2) for v in os.getloadavg()]
    result = run(args.embodiment, args.trials, 150 + os.getpid() % 50, args.chunk_hz)
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": load,
        **result,
        "core_step_while_jogging": core_jog_cost(args.embodiment),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
