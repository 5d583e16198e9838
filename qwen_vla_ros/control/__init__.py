"""Controller core: chunk scheduling, blending, interpolation, safety and the watchdog; composes teleop (no ROS imports)."""
from qwen_vla_ros.control.controller import CommandSource, Controller, ControlOutput, JoyOutcome
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.control.policy import ChunkOutcome, PolicySource

__all__ = ["ChunkOutcome", "CommandLayout", "CommandSource", "ControlOutput", "Controller", "JoyOutcome", "PolicySource"]
