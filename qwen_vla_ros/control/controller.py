"""The controller core: one call per control period turns the active source's target into a safe command.

No ROS and no clock: every method takes ``now_ns``. A node feeds it joint states,
odometry, chunks and e-stop events, calls :meth:`Controller.step` on its timer and
publishes what comes back.

Command sources. The policy is one :class:`CommandSource`, the operator
(:class:`~qwen_vla_ros.teleop.jog.TeleopSource`) another; more can be added with
:meth:`Controller.add_source` and chosen with :meth:`Controller.select_source`, which also
decides how the hand-over starts: ramped from the measured position or from the current
command (bumpless); teleop needs neither, its targets start from the command.
``select_source(None)`` holds. Whatever the source, its target passes the same safety
stages (:mod:`qwen_vla_ros.control.safety`).

Arbitration (:mod:`qwen_vla_ros.teleop.arbitration`). :meth:`Controller.update_joy` feeds
the arbiter, whose modes select the source: ``policy``, ``teleop`` (takeover: teleop
starts from the current command) or ``hold``; ``policy`` again
(hand-back: the plan from before the takeover is dropped and the next chunk ramps in from
the current command). Chunks arriving while the
policy is not in control are rejected (``inactive``).

Base Twist while holding. In ``hold`` a base gets exactly one zero Twist (the period after
the release; the watchdog's stop takes effect at once, not ramped) and then none
(``ControlOutput.send_base`` is False), as teleop_twist_joy does on release; the driver's
own command timeout keeps it stopped. Everywhere else a Twist goes out every period,
including the zero Twists of the watchdog while the policy or operator is in control.

Watchdog. When the source has nothing to say (its trajectory ran out), when a required
feedback stream goes stale, while the e-stop is latched, or while the policy is in control
but its heartbeat has been silent for ``safety.policy_timeout_s``
(:mod:`qwen_vla_ros.control.liveness`), the controller holds: arms brake to a stop within
their limits and stay; a base goes to zero. The e-stop latches until
:meth:`Controller.reset_estop`, which restarts from the measured position with a ramp. A
lost policy's plan is dropped; when its heartbeat returns, its next chunk ramps in from the
command. Chunks arriving while the e-stop is latched or the policy is lost are rejected
(``estop``, ``policy_lost``), never counted as accepted.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.loader import ConfigError
from qwen_vla_ros.config.runtime import RuntimeConfig
from qwen_vla_ros.control.feedback import ChunkContext, Feedback
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.control.liveness import LivenessEvent, PolicyLiveness
from qwen_vla_ros.control.policy import REJECTION_REASONS, ChunkOutcome, PolicySource, PreparedChunk, Rejection
from qwen_vla_ros.control.safety import SafetyCounts, SafetyFilter
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.teleop.arbitration import Arbiter, ArbitrationMode, Transition, TrialChange
from qwen_vla_ros.teleop.jog import TeleopSource
from qwen_vla_ros.teleop.mapping import parse_joy

Mode = Literal["waiting", "running", "holding", "stale", "estop", "policy_lost"]
PERIOD_WINDOW = 1000  # periods kept for the period-error percentiles


class CommandSource(Protocol):
    """Anything that proposes a command-space target each period (policy, teleop, leader arms)."""

    name: str

    def target(self, now_ns: int, feedback: Feedback) -> np.ndarray | None:
        """The wanted command at ``now_ns``; None when it has nothing to say. Must not change state."""
        ...

    def tick(self, now_ns: int, command: np.ndarray, dt_s: float) -> None:
        """Once per period while active, before :meth:`target`; ``command`` is what was sent last period,
        ``dt_s`` the time this step covers (at most a period)."""
        ...


@dataclass(frozen=True)
class ControlOutput:
    stamp_ns: int
    positions: np.ndarray  # command-space values (joint angles, normalised grippers, base v and omega)
    velocities: np.ndarray  # rate of each arm channel; for base channels the commanded v and omega
    mode: Mode
    source: str
    arbitration: ArbitrationMode = "policy"
    send_base: bool = True  # False: no Twist this period (holding after the one zero Twist)


@dataclass(frozen=True)
class JoyOutcome:
    events: list[str]  # button events that fired (arbitration.EVENT_BUTTONS names, resume_ignored)
    transitions: list[Transition]


class Controller:
    def __init__(self, config: EmbodimentConfig, runtime: RuntimeConfig):
        self.config = config
        self.layout = CommandLayout(config)
        self.period_s = config.control.period_s
        self.period_ns = round(self.period_s * NS_PER_S)
        if self.period_ns <= 0:
            raise ConfigError(config.name, [f"control.rate_hz: {config.control.rate_hz:g} gives a period of {self.period_ns} ns"])
        self.feedback = Feedback(self.layout, config.safety)
        self.policy = PolicySource(config, self.layout, runtime.blending, runtime.execution == "synchronous")
        self.teleop = TeleopSource(config, self.layout)
        self.liveness = PolicyLiveness(config.safety.policy_timeout_s)
        self._liveness_events: list[LivenessEvent] = []
        self.sources: dict[str, CommandSource] = {self.policy.name: self.policy, self.teleop.name: self.teleop}
        self.active: str | None = self.policy.name
        self.arbiter = Arbiter(config.teleop)
        self.joy_rejected = 0
        self._zero_twist_sent = False
        self._transitions: list[Transition] = []
        self.safety = SafetyFilter(self.layout, self.period_s, config.safety.startup_ramp_s)
        self.counts = SafetyCounts()
        self.mode: Mode = "waiting"
        self.estop = False
        self.holds = 0  # times a running source ran out
        self.stale_events = 0
        self.bad_feedback = 0
        self._was_fresh = False
        self._last_step_ns: int | None = None
        self._period_errors: deque[float] = deque(maxlen=PERIOD_WINDOW)

    # -- feedback -----------------------------------------------------------------------
    def update_joint_state(self, arm: str, names: Sequence[str], positions: Sequence[float], stamp_ns: int, now_ns: int) -> None:
        """Raises MalformedMessageError (and counts it) for a message that cannot be used."""
        try:
            self.feedback.update_joint_state(arm, names, positions, stamp_ns, now_ns)
        except MalformedMessageError:
            self.bad_feedback += 1
            raise

    def update_odometry(self, pose: Sequence[float], twist: Sequence[float], stamp_ns: int, now_ns: int) -> None:
        x, y, yaw = pose
        linear, angular = twist
        try:
            self.feedback.update_odometry(x, y, yaw, linear, angular, stamp_ns=stamp_ns, now_ns=now_ns)
        except MalformedMessageError:
            self.bad_feedback += 1
            raise

    # -- chunks -------------------------------------------------------------------------
    def chunk_context(self, chunk: ActionChunk) -> ChunkContext:
        return self.feedback.context(chunk.stamp_ns or 0)

    def prepare(self, chunk: ActionChunk, now_ns: int, context: ChunkContext) -> PreparedChunk:
        """Pure and possibly slow (IK): a node may run it outside its lock."""
        return self.policy.prepare(chunk, now_ns, context)

    def accept(self, prepared: PreparedChunk, now_ns: int) -> ChunkOutcome:
        if self.estop:
            return self.policy.reject(Rejection.ESTOP, "the e-stop is latched: call /qwen_vla/estop/reset")
        if self.active != self.policy.name:
            return self.policy.reject(Rejection.INACTIVE, f"mode {self.arbiter.mode!r}: the policy is not in control")
        if not self.liveness.alive(now_ns):
            return self.policy.reject(Rejection.POLICY_LOST, f"no policy heartbeat for {self.liveness.silence_s(now_ns):.3f} s")
        return self.policy.accept(prepared, now_ns, self._plan_state())

    def submit(self, chunk: ActionChunk, now_ns: int) -> ChunkOutcome:
        return self.accept(self.prepare(chunk, now_ns, self.chunk_context(chunk)), now_ns)

    def reject_malformed(self, detail: str) -> ChunkOutcome:
        """A message that could not be decoded into a chunk at all."""
        return self.policy.reject(Rejection.MALFORMED, detail)

    def reject_too_large(self, size_bytes: int, limit_bytes: int) -> ChunkOutcome:
        """A message refused by its size alone, before anything decoded it."""
        detail = f"{size_bytes} bytes, more than the {limit_bytes} that safety.max_chunk_actions allows"
        return self.policy.reject(Rejection.TOO_LARGE, detail)

    def _plan_state(self) -> np.ndarray:
        command = self.safety.state.position if self.safety.state is not None else self.feedback.measured()
        if self.policy.plan_width == len(command):
            return command
        pose = self.feedback.pose()
        return np.concatenate([command, pose if pose is not None else np.zeros(3)])

    # -- policy liveness -----------------------------------------------------------------
    def policy_heartbeat(self, now_ns: int) -> None:
        """The policy's heartbeat arrived (``now_ns`` on this clock, not the sender's stamp)."""
        self.liveness.beat(now_ns)

    def take_liveness_events(self) -> list[LivenessEvent]:
        """Policy lost / back since the last call, oldest first, for the node to log."""
        events, self._liveness_events = self._liveness_events, []
        return events

    def _watch_policy(self, now_ns: int) -> bool:
        """Once per period: act on a lost or returning policy; whether it is alive now."""
        event = self.liveness.update(now_ns)
        if event is not None:
            self._liveness_events.append(event)
            if event.change == "lost":
                self.policy.clear()  # its plan must never resume after a gap
            elif event.change == "back" and self.active == self.policy.name and self.safety.started:
                self.safety.arm_ramp()
        return self.liveness.alive(now_ns)

    # -- e-stop and sources -------------------------------------------------------------
    def engage_estop(self) -> None:
        """Latch: hold until :meth:`reset_estop`. The plan is dropped; motion resumes with the next chunk."""
        self.estop = True
        self.policy.clear()
        self.arbiter.trial_hold = False  # after an e-stop only resume_policy returns control, never a trial start

    def reset_estop(self) -> tuple[bool, str]:
        if not self.estop:
            return True, "e-stop was not engaged"
        self.estop = False
        self.policy.clear()  # a chunk taken in while stopped was planned for a robot that did not move
        if self.feedback.ready():
            self.safety.reset(self.feedback.measured())
        return True, "e-stop cleared; motion resumes with the next chunk, from the measured position with a ramp"

    def add_source(self, source: CommandSource) -> None:
        self.sources[source.name] = source

    def select_source(self, name: str | None, ramp_from: Literal["measured", "command"] = "command") -> None:
        """Make ``name`` the active source (None: hold) and ramp its first target in."""
        if name is not None and name not in self.sources:
            raise KeyError(f"unknown command source {name!r}; sources: {sorted(self.sources)}")
        self.active = name
        if ramp_from == "measured" and self.feedback.ready():
            self.safety.reset(self.feedback.measured())
        elif self.safety.started:
            self.safety.arm_ramp()

    # -- operator -----------------------------------------------------------------------
    def update_joy(self, axes: Sequence[float], buttons: Sequence[int], now_ns: int) -> JoyOutcome:
        """A Joy message: mode changes apply at once, e-stop and jog buttons act here; trial events are the caller's.

        Raises MalformedMessageError (and counts it) for a message that does not fit the teleop
        mapping; it is ignored, so a joystick sending only such messages expires like a silent one.
        """
        try:
            joy = parse_joy(axes, buttons, self.config.teleop, now_ns)
        except MalformedMessageError:
            self.joy_rejected += 1
            raise
        events, transitions = self.arbiter.on_joy(joy)
        self.teleop.joy = joy
        for event in events:
            if event == "estop":
                self.engage_estop()
            elif event == "arm_select":
                self.teleop.next_arm()
            elif event == "jog_mode":
                self.teleop.toggle_mode()
        for transition in transitions:
            self._apply(transition)
        return JoyOutcome(events, transitions)

    def trial_changed(self, change: TrialChange, trial: str) -> Transition | None:
        """The recorder says ``trial`` started or ended (:meth:`Arbiter.on_trial`); the mode change applies at once."""
        transition = self.arbiter.on_trial(change, trial)
        if transition is not None:
            self._apply(transition)
        return transition

    def update_leader(self, arm: str, names: Sequence[str], positions: Sequence[float], now_ns: int) -> None:
        """A leader arm's joint state (ALOHA); MalformedMessageError (counted) when it cannot be used."""
        try:
            self.teleop.leaders.update(arm, names, positions, now_ns)
        except MalformedMessageError:
            self.bad_feedback += 1
            raise

    def take_transitions(self) -> list[Transition]:
        """Mode changes since the last call (from Joy or from a timeout in :meth:`step`), oldest first."""
        transitions, self._transitions = self._transitions, []
        return transitions

    def _apply(self, transition: Transition) -> None:
        self._transitions.append(transition)
        if transition.mode == "teleop":
            self.teleop.engage()
            self.select_source(self.teleop.name)  # the ramp is cancelled in step(): teleop starts from the command
        elif transition.mode == "hold":
            self._zero_twist_sent = False
            self.select_source(None)
        else:
            self.policy.clear()  # what it planned before the takeover must never resume
            self.select_source(self.policy.name, ramp_from="command")

    # -- the loop -----------------------------------------------------------------------
    def _target(self, now_ns: int, fresh: bool, policy_alive: bool) -> tuple[np.ndarray | None, Mode]:
        if self.estop:
            return None, "estop"
        if not fresh:
            return None, "stale"
        if self.active is None:
            return None, "holding"
        if self.active == self.policy.name and not policy_alive:
            return None, "policy_lost"
        target = self.sources[self.active].target(now_ns, self.feedback)
        return target, "running" if target is not None else "holding"

    def step(self, now_ns: int, scheduled: bool = True) -> ControlOutput | None:
        """One control period. None until every required feedback stream has arrived (nothing to send).

        ``scheduled=False`` marks a step run off the period grid on purpose (a takeover served at
        once): it is limited over its real duration and left out of the period-error figures.
        """
        if scheduled and self._last_step_ns is not None and now_ns > self._last_step_ns:
            self._period_errors.append(abs((now_ns - self._last_step_ns) - self.period_ns) / NS_PER_S)
        self._last_step_ns = now_ns
        policy_alive = self._watch_policy(now_ns)
        transition = self.arbiter.tick(now_ns)
        if transition is not None:
            self._apply(transition)
        if not self.feedback.ready():
            self.mode = "waiting"
            return None
        if not self.safety.started:
            self.safety.reset(self.feedback.measured())
        fresh = self.feedback.fresh(now_ns)
        if fresh and not self._was_fresh and self.mode == "stale":
            self.safety.arm_ramp()
        if self._was_fresh and not fresh:
            self.stale_events += 1
        self._was_fresh = fresh
        if self.active == self.teleop.name and self.safety.ramping:
            self.safety.cancel_ramp()  # teleop targets start from the command: no gap to ramp over, after a takeover or a reset
        if self.active is not None:
            self.sources[self.active].tick(now_ns, self.safety.position, self.safety.elapsed_s(now_ns))
        target, mode = self._target(now_ns, fresh, policy_alive)
        if mode == "holding" and self.mode == "running":
            self.holds += 1
        self.mode = mode
        state = self.safety.step(target, now_ns, self.counts)
        velocities = np.where(self.layout.velocity_channel, state.position, state.velocity)
        arbitration = self.arbiter.mode
        return ControlOutput(now_ns, state.position, velocities, mode, self.active or "hold", arbitration,
                             self._send_base(arbitration, state.position))

    def _send_base(self, arbitration: ArbitrationMode, command: np.ndarray) -> bool:
        """One zero Twist after entering hold, then none (see the module docstring)."""
        if arbitration != "hold" or self.layout.base is None:
            return True
        if self._zero_twist_sent and not np.any(command[self.layout.base.command_index]):
            return False
        self._zero_twist_sent = True
        return True

    def committed(self, now_ns: int) -> np.ndarray | None:
        """Commands of the next ``committed_steps`` periods if no new chunk arrives (steps x channels)."""
        if not self.safety.started:
            return None
        steps = self.config.control.committed_steps
        lookahead = self.safety.copy()
        fresh = self.feedback.fresh(now_ns)
        policy_alive = self.liveness.alive(now_ns)  # as now: the look-ahead assumes no new event
        rows = np.empty((steps, len(self.layout)))
        for i in range(steps):
            t_ns = now_ns + (i + 1) * self.period_ns
            target, _ = self._target(t_ns, fresh, policy_alive)
            rows[i] = lookahead.step(target, t_ns).position
        return rows

    def status(self, now_ns: int) -> dict[str, str | int | float]:
        """The figures of /qwen_vla/controller/state."""
        stats = self.policy.stats
        errors = np.array(self._period_errors) * 1000.0
        newest = stats.newest_stamp_ns
        status: dict[str, str | int | float] = {
            "mode": self.mode,
            "control_mode": self.arbiter.mode,
            "active_source": self.active or "hold",
            "estop": int(self.estop),
            "ramping": int(self.safety.ramping),
            "chunk_age_s": round((now_ns - newest) / NS_PER_S, 4) if newest is not None else float("nan"),
            "chunks_accepted": stats.accepted,
            "chunks_rejected": sum(stats.rejected.values()),
            "skipped_actions": stats.skipped_actions,
            "clamped_actions": stats.clamped_actions,
            "clamped_commands": self.counts.clamped,
            "velocity_limited": self.counts.limits.velocity,
            "acceleration_limited": self.counts.limits.acceleration,
            "ik_unreachable": stats.ik_unreachable,
            "holds": self.holds,
            "stale_events": self.stale_events,
            "policy_heartbeat_age_s": round(self.liveness.silence_s(now_ns), 4),
            "policy_losses": self.liveness.losses,
            "bad_feedback": self.bad_feedback,
            "takeovers": self.arbiter.takeovers,
            "trial_event": self.arbiter.trial_event,
            "joy_rejected": self.joy_rejected,
            "jog": f"{self.teleop.selected_arm or '-'} {self.teleop.mode}",
            "teleop_ik_unreachable": self.teleop.ik_unreachable,
        }
        for reason in REJECTION_REASONS:
            status[f"rejected_{reason}"] = stats.rejected[reason]
        figures = (
            {"last": errors[-1], "p50": np.percentile(errors, 50), "p99": np.percentile(errors, 99), "max": errors.max()}
            if len(errors)
            else dict.fromkeys(("last", "p50", "p99", "max"), float("nan"))
        )
        for name, figure in figures.items():
            status[f"period_error_ms_{name}"] = round(float(figure), 4)
        return status
