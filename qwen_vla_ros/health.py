"""Diagnostic levels, without ROS: the cores that judge their own health (the controller's,
the sim's) return one, and ``nodes.ros_contract.diagnostic_status`` puts it on the wire."""
from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels (the message stores them as one byte)."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3
