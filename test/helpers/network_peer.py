"""Another machine on the robot's network, as a plain ROS 2 process with stock settings.

Run inside a network namespace (test_dds_confinement.py) with ``ROS_STATIC_PEERS`` naming the
robot's address. It lists what it discovers, tries to reset the e-stop, then holds the deadman
with the stick pushed: what an intruder would do. It imports nothing from qwen_vla_ros, so no
project setting can help it or hold it back. Prints one JSON line.

argv: discover_s joy_topic deadman_button linear_axis robot_topic...
"""
from __future__ import annotations

import json
import sys
import time

import rclpy
from sensor_msgs.msg import Joy
from std_srvs.srv import Trigger

RESET_SERVICE = "/qwen_vla/estop/reset"


def main() -> None:
    discover_s, joy_topic, deadman, linear_axis = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    robot_topics = set(sys.argv[5:])
    rclpy.init()
    node = rclpy.create_node("network_peer")
    joy = node.create_publisher(Joy, joy_topic, 10)
    reset = node.create_client(Trigger, RESET_SERVICE)
    seen: set[str] = set()
    deadline = time.monotonic() + discover_s
    while time.monotonic() < deadline and not robot_topics <= seen:
        rclpy.spin_once(node, timeout_sec=0.1)
        seen |= {name for name, _ in node.get_topic_names_and_types()}
    result = {"topics": sorted(seen), "services": sorted(name for name, _ in node.get_service_names_and_types())}
    result["reset"] = "unavailable"
    if reset.wait_for_service(timeout_sec=2.0):
        future = reset.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=5.0)
        result["reset"] = f"answered: {future.result().message}" if future.done() else "no answer"
    message = Joy(axes=[0.0] * 8, buttons=[0] * 11)
    message.buttons[deadman] = 1
    message.axes[linear_axis] = 1.0
    end = time.monotonic() + 2.5
    while time.monotonic() < end:  # joy_node's 20 Hz autorepeat
        joy.publish(message)
        rclpy.spin_once(node, timeout_sec=0.05)
    result["joy_subscribers"] = joy.get_subscription_count()
    print(json.dumps(result), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
