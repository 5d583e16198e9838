"""Perception without ROS: camera sources and capture loops (camera_node), and the policy's
input side: image checks and preparation, proprioceptive state, observation sync."""
