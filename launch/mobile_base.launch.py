"""Mobile base: waypoint trajectories tracked into cmd_vel Twist, odometry feedback.

Starts the policy, the controller (with teleop), joystick_node (joystick:=false to leave it
out), the trial recorder (record:=false to leave it out)
and camera_node (cameras the config does not take from a driver topic), or the simulator
(use_sim:=true). The processes come from
qwen_vla_ros.bringup.graph, the same description `qwen-vla-ros up mobile_base` runs on bare machines.

    ros2 launch qwen_vla_ros mobile_base.launch.py checkpoint:=/path/to/checkpoint [use_sim:=true] [record:=false] [joystick:=false]
"""
from qwen_vla_ros.bringup.launch_description import generate

EMBODIMENT = "mobile_base"


def generate_launch_description():
    return generate(EMBODIMENT)
