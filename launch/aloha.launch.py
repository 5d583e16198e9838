"""ALOHA bimanual: two ViperX-300s followers (follower_left, follower_right), four cameras.

Starts the policy, the controller (with teleop), joystick_node (joystick:=false to leave it
out), the trial recorder (record:=false to leave it out)
and camera_node (cameras the config does not take from a driver topic), or the simulator
(use_sim:=true). The processes come from
qwen_vla_ros.bringup.graph, the same description `qwen-vla-ros up aloha` runs on bare machines.

    ros2 launch qwen_vla_ros aloha.launch.py checkpoint:=/path/to/checkpoint [use_sim:=true] [record:=false] [joystick:=false]
"""
from qwen_vla_ros.bringup.launch_description import generate

EMBODIMENT = "aloha"


def generate_launch_description():
    return generate(EMBODIMENT)
