"""Real-time ROS 2 runtime for the Qwen-VLA vision-language-action model.

Importing the package is cheap: it pulls in neither rclpy nor torch. Nodes import rclpy,
the model imports torch, each only when used.
"""
__version__ = "0.1.0"
