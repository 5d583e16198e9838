"""WidowX-250s: one arm driven by end-effector deltas through IK, one camera.

Starts the policy, the controller (with teleop), joystick_node (joystick:=false to leave it
out), the trial recorder (record:=false to leave it out)
and camera_node (cameras the config does not take from a driver topic), or the simulator
(use_sim:=true). The processes come from
qwen_vla_ros.bringup.graph, the same description `qwen-vla-ros up widowx` runs on bare machines.

    ros2 launch qwen_vla_ros widowx.launch.py checkpoint:=/path/to/checkpoint [use_sim:=true] [record:=false] [joystick:=false]
"""
from qwen_vla_ros.bringup.launch_description import generate

EMBODIMENT = "widowx"


def generate_launch_description():
    return generate(EMBODIMENT)
