"""Mobile ALOHA: the bimanual arms plus a (v, omega) base on /cmd_vel.

Starts the policy, the controller (with teleop), joystick_node (joystick:=false to leave it
out), the trial recorder (record:=false to leave it out)
and camera_node (cameras the config does not take from a driver topic), or the simulator
(use_sim:=true). The processes come from
qwen_vla_ros.bringup.graph, the same description `qwen-vla-ros up aloha_mobile` runs on bare machines.

    ros2 launch qwen_vla_ros aloha_mobile.launch.py checkpoint:=/path/to/checkpoint [use_sim:=true] [record:=false] [joystick:=false]
"""
from qwen_vla_ros.bringup.launch_description import generate

EMBODIMENT = "aloha_mobile"


def generate_launch_description():
    return generate(EMBODIMENT)
