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

Trials. A trial's end (its button, or any caller of the recorder's stop services, which the
recorder announces on ``contract.TRIAL_EVENT``) puts a policy in control on hold: the arms
stay where the trial left them. That hold, and only that one, ends when the next trial
starts; a hold the operator or the e-stop caused still needs ``resume_policy``.

Button functions other than the deadman fire on the rising edge, judged against the last
message that had not expired; joy_node's autorepeat therefore never fires them twice.
Pure logic on :class:`~qwen_vla_ros.teleop.mapping.Joy` values and ``now_ns``;
:class:`qwen_vla_ros.control.Controller` applies the transitions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config.teleop import Teleop, TeleopButtons
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.teleop.mapping import Joy

ArbitrationMode = Literal["policy", "teleop", "hold"]
# Button functions that fire on a press; the deadman is a level, not an event.
EVENT_BUTTONS = (
    "estop", "resume_policy", "arm_select", "jog_mode", "trial_start", "trial_success", "trial_failure", "trial_abort",
)
# Pressed under the policy, these end its control as the trial ends: the arms hold until the next trial starts.
TRIAL_END_EVENTS = ("trial_success", "trial_failure", "trial_abort")
TrialChange = Literal["started", "ended"]


def parse_trial_event(text: str) -> tuple[TrialChange, str]:
    """(change, trial id) of a ``contract.TRIAL_EVENT`` message; MalformedMessageError for anything else."""
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise MalformedMessageError(f"trial event is not JSON: {text[:80]!r}") from exc
    change = event.get("change") if isinstance(event, dict) else None
    trial = event.get("trial") if isinstance(event, dict) else None
    if change not in ("started", "ended") or not isinstance(trial, str):
        raise MalformedMessageError(f"trial event needs change 'started' or 'ended' and a trial id: {text[:80]!r}")
    return change, trial


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
        self.trial_hold = False  # holding because a trial ended: the next trial's start resumes the policy
        self.trial_event = "none"  # the recorder's last announcement heard ("started ID", "ended ID"), for the state

    def live_joy(self, now_ns: int) -> Joy | None:
        """The latest Joy unless it has expired."""
        if self.joy is None or now_ns - self.joy.received_ns > self.timeout_ns:
            return None
        return self.joy

    def _go(self, mode: ArbitrationMode, reason: str, trial_end: bool = False) -> Transition | None:
        if mode == self.mode:
            return None
        transition = Transition(self.mode, mode, reason)
        self.mode = mode
        self.trial_hold = trial_end
        if mode == "teleop":
            self.takeovers += 1
        return transition

    def on_joy(self, joy: Joy) -> tuple[list[str], list[Transition]]:
        """Button events that fired (``EVENT_BUTTONS`` names, plus ``resume_ignored``) and mode transitions, in order."""
        before = self.live_joy(joy.received_ns)
        self.joy = joy
        bindings = {name: getattr(self.buttons, name) for name in EVENT_BUTTONS}
        events = [
            name for name, binding in bindings.items()
            if joy.pressed(binding) and not (before is not None and before.pressed(binding))
        ]
        transitions: list[Transition | None] = []
        if "estop" in events and self.mode == "policy":
            transitions.append(self._go("hold", "e-stop button"))
        ended = [event for event in TRIAL_END_EVENTS if event in events]
        if ended and self.mode == "policy":  # the trial is over: the arms hold (docs/operation.md, "Trials")
            transitions.append(self._go("hold", f"{ended[0]} button: the trial ended", trial_end=True))
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

    def on_trial(self, change: TrialChange, trial: str) -> Transition | None:
        """The recorder's announcement that ``trial`` started or ended, whoever asked for it."""
        self.trial_event = f"{change} {trial}"
        if change == "ended" and self.mode == "policy":
            return self._go("hold", f"{trial} ended", trial_end=True)
        if change == "started" and self.mode == "hold" and self.trial_hold:
            return self._go("policy", f"{trial} started")
        return None

    def tick(self, now_ns: int) -> Transition | None:
        """Once per control period: an expired joystick releases the deadman."""
        if self.mode == "teleop" and self.live_joy(now_ns) is None:
            silent_s = (now_ns - self.joy.received_ns) / NS_PER_S if self.joy is not None else float("inf")
            return self._go("hold", f"no Joy for {silent_s:.3f} s (timeout {self.timeout_ns / NS_PER_S:g} s)")
        return None
