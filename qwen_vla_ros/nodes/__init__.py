"""Thin ROS 2 shells: each node translates messages and parameters to and from the core."""
