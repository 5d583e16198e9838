"""The bottom of teleop: a Joy message read through the configured mapping.

joy_node's deadzone, and the check that a message fits the embodiment's axis and button
bindings (``teleop`` in the embodiment YAML), so that what the arbiter and the jog read is
always a valid :class:`Joy`. The evdev driver (:mod:`qwen_vla_ros.teleop.joystick`) uses the
same deadzone; nothing here imports anything above config.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.config.teleop import AxisButton, Teleop
from qwen_vla_ros.errors import MalformedMessageError


def apply_deadzone(values: np.ndarray, deadzone: float) -> np.ndarray:
    """joy_node's deadzone: values within it read 0, the rest is rescaled so full deflection stays 1."""
    values = np.asarray(values, dtype=float)
    if deadzone <= 0:
        return values
    magnitude = np.maximum(np.abs(values) - deadzone, 0.0) / (1.0 - deadzone)
    return np.sign(values) * np.minimum(magnitude, 1.0)


@dataclass(frozen=True)
class Joy:
    """One Joy message, checked against the configured mapping; axes are past the deadzone."""

    axes: np.ndarray
    buttons: np.ndarray  # bool
    received_ns: int

    def pressed(self, binding: int | AxisButton | None) -> bool:
        if binding is None:
            return False
        if isinstance(binding, AxisButton):
            return binding.pressed(float(self.axes[binding.axis]))
        return bool(self.buttons[binding])

    def axis(self, index: int | None) -> float:
        return 0.0 if index is None else float(self.axes[index])


def parse_joy(axes: Sequence[float] | np.ndarray, buttons: Sequence[int] | np.ndarray, teleop: Teleop, now_ns: int) -> Joy:
    """MalformedMessageError when the message cannot drive this mapping: a different gamepad, or a broken driver."""
    axes = np.asarray(axes, dtype=float)
    buttons = np.asarray(buttons)
    if len(buttons) <= teleop.max_button:
        raise MalformedMessageError(
            f"Joy has {len(buttons)} buttons but teleop.buttons uses index {teleop.max_button}; "
            "check the gamepad or the embodiment's teleop mapping"
        )
    if len(axes) <= teleop.max_axis:
        raise MalformedMessageError(f"Joy has {len(axes)} axes but the teleop mapping uses axis {teleop.max_axis}")
    if not np.all(np.isfinite(axes)):
        raise MalformedMessageError(f"Joy axes are not finite: {axes.tolist()}")
    return Joy(apply_deadzone(axes, teleop.axis_deadzone), buttons != 0, now_ns)
