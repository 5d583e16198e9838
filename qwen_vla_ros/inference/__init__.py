"""The policy node's decisions without ROS: when to infer (scheduler), what the robot has
committed to (real-time chunking input), how long inference takes (latency windows), and
the loop that ties them to observation sync and the model (runner)."""
