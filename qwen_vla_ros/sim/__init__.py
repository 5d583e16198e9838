"""Simulated robots with no ROS import: MuJoCo ALOHA, kinematic arms and bases, pacing and rendering.

``world.Simulation`` builds the cell an embodiment config describes; ``loop.SimLoop`` steps it
in real time with rendering on a thread beside it; ``nodes/sim_node.py`` is the ROS shell.
"""
