"""Controller core: chunk scheduling, blending, interpolation, safety, the watchdog and teleop arbitration (no ROS imports)."""
from qwen_vla_ros.control.arbitration import ArbitrationMode
from qwen_vla_ros.control.controller import CommandSource, ControlOutput, Controller, JoyOutcome
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.control.policy import ChunkOutcome, PolicySource
from qwen_vla_ros.control.teleop import TeleopSource

__all__ = [
    "ArbitrationMode", "ChunkOutcome", "CommandLayout", "CommandSource", "ControlOutput", "Controller", "JoyOutcome",
    "PolicySource", "TeleopSource",
]
