"""Child process for DDS tests: publish N 640x480 rgb8 frames, BEST_EFFORT, once a subscriber is seen.

Each frame's first pixel row encodes its index, so the receiver can check content as well as count.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from qwen_vla_ros.nodes.ros_contract import image_to_msg
from qwen_vla_ros.ros_env import apply_dds_profile


def main(topic: str, count: int, rate_hz: float) -> None:
    apply_dds_profile()
    rclpy.init()
    node = rclpy.create_node("image_publisher")
    publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
    deadline = time.monotonic() + 20
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    for index in range(count):
        frame[0, :, :] = index % 256
        publisher.publish(image_to_msg(frame, "rgb8", time.time_ns(), "cam"))
        time.sleep(1.0 / rate_hz)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
