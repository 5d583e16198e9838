"""Teleop without ROS: Joy mapping (bottom), arbitration, jog and leader following, and the evdev driver.

No re-exports: ``joystick_node`` imports only the driver and the mapping under it, not the IK
that the jog needs.
"""
