"""Who commands the robot: the policy, the operator (teleop) or nobody (hold).

The idea is twist_mux's, made sticky where safety needs it:

- **Priorities.** The operator outranks the policy: a Joy message with the deadman held
  switches to ``teleop`` at once, whatever the policy is doing. The policy never preempts
  the operator.
- **Expiring inputs.** The joystick is an input with a timeout (``teleop.joy_timeout_s``);
  an expired joystick is masked, which means its deadman counts as released. A message that
  does not fit the configured mapping (too few buttons or axes, non-finite axes) is refused
  before it gets here, so it refreshes nothing and expires like silence.
- **Fail safe.** Where twist_mux would fall back to the next input, leaving ``teleop``
  (deadman released, joystick lost) goes to ``hold``, never back to the policy. Only a
  deliberate press of ``resume_policy`` (with the deadman up) returns control to it. The
  e-stop button is twist_mux's lock: it latches the e-stop, and a policy in control is put
  on hold, so clearing the e-stop never silently restarts it.

Button functions other than the deadman fire on the rising edge, judged against the last
message that had not expired; joy_node's autorepeat therefore never fires them twice.
Pure logic on :class:`Joy` values and ``now_ns``; :class:`qwen_vla_ros.control.Controller`
applies the transitions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.teleop import AxisButton, Teleop, TeleopButtons

ArbitrationMode = Literal["policy", "teleop", "hold"]
# Button functions that fire on a press; the deadman is a level, not an event.
EVENT_BUTTONS = (
    "estop", "resume_policy", "arm_select", "jog_mode", "trial_start", "trial_success", "trial_failure", "trial_abort",
)


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


def parse_joy(axes: list[float] | np.ndarray, buttons: list[int] | np.ndarray, teleop: Teleop, now_ns: int) -> Joy:
    """ValueError when the message cannot drive this mapping: a different gamepad, or a broken driver."""
    axes = np.asarray(axes, dtype=float)
    buttons = np.asarray(buttons)
    if len(buttons) <= teleop.max_button:
        raise ValueError(
            f"Joy has {len(buttons)} buttons but teleop.buttons uses index {teleop.max_button}; "
            "check the gamepad or the embodiment's teleop mapping"
        )
    if len(axes) <= teleop.max_axis:
        raise ValueError(f"Joy has {len(axes)} axes but the teleop mapping uses axis {teleop.max_axis}")
    if not np.all(np.isfinite(axes)):
        raise ValueError(f"Joy axes are not finite: {axes.tolist()}")
    return Joy(apply_deadzone(axes, teleop.axis_deadzone), buttons != 0, now_ns)


@dataclass(frozen=True)
class Transition:
    previous: ArbitrationMode
    mode: ArbitrationMode
    reason: str


class Arbiter:
    def __init__(self, teleop: Teleop):
        self.buttons: TeleopButtons = teleop.buttons
        self.timeout_ns = round(teleop.joy_timeout_s * NS_PER_S)
        self.mode: ArbitrationMode = "policy"
        self.joy: Joy | None = None
        self.takeovers = 0

    def live_joy(self, now_ns: int) -> Joy | None:
        """The latest Joy unless it has expired."""
        if self.joy is None or now_ns - self.joy.received_ns > self.timeout_ns:
            return None
        return self.joy

    def _go(self, mode: ArbitrationMode, reason: str) -> Transition | None:
        if mode == self.mode:
            return None
        transition = Transition(self.mode, mode, reason)
        self.mode = mode
        if mode == "teleop":
            self.takeovers += 1
        return transition

    def on_joy(self, joy: Joy) -> tuple[list[str], list[Transition]]:
        """Button events that fired (``EVENT_BUTTONS`` names, plus ``resume_ignored``) and mode transitions, in order."""
        before = self.live_joy(joy.received_ns)
        self.joy = joy
        events = [
            name for name in EVENT_BUTTONS
            if joy.pressed(getattr(self.buttons, name)) and not (before is not None and before.pressed(getattr(self.buttons, name)))
        ]
        transitions: list[Transition | None] = []
        if "estop" in events and self.mode == "policy":
            transitions.append(self._go("hold", "e-stop button"))
        if joy.pressed(self.buttons.deadman):
            transitions.append(self._go("teleop", "deadman pressed"))
            if "resume_policy" in events:
                events[events.index("resume_policy")] = "resume_ignored"
        else:
            if self.mode == "teleop":
                transitions.append(self._go("hold", "deadman released"))
            if "resume_policy" in events:
                transitions.append(self._go("policy", "resume_policy pressed"))
        return events, [t for t in transitions if t is not None]

    def tick(self, now_ns: int) -> Transition | None:
        """Once per control period: an expired joystick releases the deadman."""
        if self.mode == "teleop" and self.live_joy(now_ns) is None:
            silent_s = (now_ns - self.joy.received_ns) / NS_PER_S if self.joy is not None else float("inf")
            return self._go("hold", f"no Joy for {silent_s:.3f} s (timeout {self.timeout_ns / NS_PER_S:g} s)")
        return None
