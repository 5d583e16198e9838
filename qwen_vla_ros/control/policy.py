"""The policy as a command source: action chunks in, a plan sampled at the control rate out.

A chunk goes through two phases so a node can keep the expensive one off its lock:

- ``prepare`` (pure): judge the chunk (names, shape, finite values, dt, stamp), clamp its
  values to the action channels' bounds, and turn it into a plan in command units: joint
  and gripper targets pass through, end-effector deltas become IK joint targets,
  robot-frame waypoints become odometry-frame waypoints.
- ``accept``: reject duplicates and chunks older than the newest one, count the actions
  already in the past, and hand over to the new plan through the blender.

A plan starts at the chunk's observation stamp: actions due while the policy inferred are
already past when it arrives. With ``synchronous`` execution (``RuntimeConfig.execution``, the
execution-strategy study's stop-infer-execute baseline) the robot stood still during
inference, so the plan starts at the chunk's arrival instead and none of it is past.

Plan vectors are command vectors, plus (x, y, yaw) at the end for a waypoint base, whose
(v, omega) the path tracker fills in when sampled.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.runtime import Blending
from qwen_vla_ros.control.blending import Blender
from qwen_vla_ros.control.feedback import ChunkContext, Feedback
from qwen_vla_ros.control.interpolation import Trajectory
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.embodiments.base import PathTracker, local_to_world
from qwen_vla_ros.embodiments.ik import ArmIK, apply_ee_delta


class Rejection(str, Enum):
    """Why a chunk was refused, whole; the value is the text of logs and of the ``rejected_<reason>``
    diagnostics key, so a caller can tell the input's fault by kind."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    WRONG_NAMES = "wrong_names"
    WRONG_SHAPE = "wrong_shape"
    TOO_LONG = "too_long"
    NON_FINITE = "non_finite"
    BAD_DT = "bad_dt"
    BAD_SPACING = "bad_spacing"
    TOO_LONG_DURATION = "too_long_duration"
    UNSTAMPED = "unstamped"
    FUTURE_STAMP = "future_stamp"
    STALE = "stale"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    EXPIRED = "expired"
    NO_STATE = "no_state"
    INACTIVE = "inactive"
    ESTOP = "estop"
    POLICY_LOST = "policy_lost"

    def __str__(self) -> str:  # the text, also where format() would print the member name
        return self.value


REJECTION_REASONS = tuple(Rejection)


@dataclass(frozen=True)
class PreparedChunk:
    chunk: ActionChunk
    rejection: Rejection | None = None
    detail: str = ""
    trajectory: Trajectory | None = None
    clamped: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChunkOutcome:
    accepted: bool
    reason: Rejection | None = None
    detail: str = ""
    skipped: int = 0
    clamped: int = 0
    warnings: tuple[str, ...] = ()


@dataclass
class ChunkStats:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped_actions: int = 0
    clamped_actions: int = 0
    ik_unreachable: int = 0
    newest_stamp_ns: int | None = None


class PolicySource:
    name = "policy"

    def __init__(self, config: EmbodimentConfig, layout: CommandLayout, blending: Blending,
                 synchronous: bool = False):
        self.config = config
        self.synchronous = synchronous
        self.layout = layout
        self.names = tuple(config.action.names)
        self.lower = np.array([c.limits.lower for c in config.action.channels])
        self.upper = np.array([c.limits.upper for c in config.action.channels])
        self.blender = Blender(blending, config.control.period_s)
        self.stats = ChunkStats()
        self.iks = {arm.name: ArmIK.from_config(arm.arm) for arm in layout.arms if arm.ee_action is not None}
        # Deltas execute over the period after they are due, so such plans start from the state at the stamp.
        self.anchored = bool(self.iks)
        self.waypoints = layout.base is not None and layout.base.waypoints
        self.tracker = PathTracker(layout.base.base.tracker) if self.waypoints and layout.base else None
        self.lookahead_ns = round(self.tracker.settings.lookahead_s * NS_PER_S) if self.tracker else 0
        self.plan_width = len(layout) + (3 if self.waypoints else 0)

    # -- phase 1: pure -------------------------------------------------------------------
    def _judge(self, chunk: ActionChunk, now_ns: int) -> tuple[Rejection, str] | None:
        safety = self.config.safety
        if tuple(chunk.channel_names) != self.names:
            return Rejection.WRONG_NAMES, (f"channels {list(chunk.channel_names)[:8]} are not the embodiment's "
                                           f"{list(self.names)[:8]}")
        actions = np.asarray(chunk.actions)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] != len(self.names):
            return Rejection.WRONG_SHAPE, f"actions have shape {actions.shape}, expected (H >= 1, {len(self.names)})"
        if actions.shape[0] > safety.max_chunk_actions:
            return Rejection.TOO_LONG, (f"{actions.shape[0]} actions, more than safety.max_chunk_actions = "
                                        f"{safety.max_chunk_actions}")
        if not np.all(np.isfinite(actions)):
            return Rejection.NON_FINITE, f"{int(np.count_nonzero(~np.isfinite(actions)))} non-finite action values"
        if not (np.isfinite(chunk.dt) and chunk.dt > 0):
            return Rejection.BAD_DT, f"dt = {chunk.dt}"
        action_dt = self.config.control.action_dt
        if abs(chunk.dt - action_dt) > safety.action_dt_tolerance_s:
            return Rejection.BAD_SPACING, (f"actions {chunk.dt:g} s apart, the embodiment's control.action_dt is {action_dt:g} s "
                                   f"(tolerance {safety.action_dt_tolerance_s:g} s)")
        span_s = (actions.shape[0] - 1) * chunk.dt
        if span_s > safety.max_chunk_duration_s:
            return Rejection.TOO_LONG_DURATION, (f"actions span {span_s:g} s, more than safety.max_chunk_duration_s = "
                                         f"{safety.max_chunk_duration_s:g} s")
        if chunk.stamp_ns is None:
            return Rejection.UNSTAMPED, "chunk has no observation stamp"
        age_s = (now_ns - chunk.stamp_ns) / NS_PER_S
        if -age_s > safety.future_stamp_tolerance_s:
            return Rejection.FUTURE_STAMP, (f"stamp is {-age_s:.3f} s in the future "
                                            f"(tolerance {safety.future_stamp_tolerance_s} s)")
        if age_s > safety.max_chunk_age_s:
            return Rejection.STALE, f"observation is {age_s:.3f} s old (max {safety.max_chunk_age_s} s)"
        return None

    def prepare(self, chunk: ActionChunk, now_ns: int, context: ChunkContext) -> PreparedChunk:
        verdict = self._judge(chunk, now_ns)
        if verdict is not None:
            return PreparedChunk(chunk, *verdict)
        raw = np.asarray(chunk.actions, dtype=float)
        actions = np.clip(raw, self.lower, self.upper)
        clamped = int(np.count_nonzero(actions != raw))
        if self.waypoints and context.pose is None:
            return PreparedChunk(chunk, Rejection.NO_STATE, "no odometry yet to place robot-frame waypoints")
        missing = [name for name in self.iks if name not in context.arm_joints]
        if missing:
            return PreparedChunk(chunk, Rejection.NO_STATE, f"no joint state yet for arms {missing}")

        offset = 1 if self.anchored else 0
        plan = np.zeros((actions.shape[0] + offset, self.plan_width))
        if offset:
            plan[0, : len(self.layout)] = context.measured
        warnings: list[str] = []
        for arm in self.layout.arms:
            if arm.joint_action is not None:
                plan[offset:, arm.joint_index] = actions[:, arm.joint_action]
            if arm.gripper_action is not None and arm.gripper_index is not None:
                plan[offset:, arm.gripper_index] = actions[:, arm.gripper_action]
            if arm.ee_action is not None:
                plan[offset:, arm.joint_index] = self._solve_deltas(arm.name, actions[:, arm.ee_action], context, warnings)
        base = self.layout.base
        if base is not None and not self.waypoints:
            plan[offset:, base.command_index] = actions[:, base.action_index]
        if base is not None and self.waypoints and context.pose is not None:
            plan[offset:, len(self.layout):] = local_to_world(context.pose, actions[:, base.action_index])
            if offset:
                plan[0, len(self.layout):] = context.pose
        start_ns = now_ns if self.synchronous else int(chunk.stamp_ns)  # type: ignore[arg-type]  # judged above
        trajectory = Trajectory(start_ns, chunk.dt, plan, self.config.control.interpolation)
        return PreparedChunk(chunk, trajectory=trajectory, clamped=clamped, warnings=tuple(warnings))

    def _solve_deltas(self, arm: str, deltas: np.ndarray, context: ChunkContext, warnings: list[str]) -> np.ndarray:
        """Chain the deltas from the pose at the observation, each IK seeded by the previous answer."""
        ik = self.iks[arm]
        seed = context.arm_joints[arm]
        pose = ik.kinematics.forward(seed)
        targets = np.empty((deltas.shape[0], ik.kinematics.dof))
        for k, delta in enumerate(deltas):
            pose = apply_ee_delta(pose, delta)
            result = ik.solve(pose, seed)
            if not result.converged:
                warnings.append(
                    f"arm {arm!r} action {k}: target unreachable, moving to the nearest reachable pose "
                    f"({result.position_error_m * 1000:.1f} mm, {result.rotation_error_rad:.3f} rad away)"
                )
                pose = ik.kinematics.forward(result.joints)  # later deltas continue from where the arm can be
            targets[k] = seed = result.joints
        return targets

    # -- phase 2: bookkeeping ------------------------------------------------------------
    def reject(self, reason: Rejection, detail: str = "") -> ChunkOutcome:
        self.stats.rejected[reason] += 1
        return ChunkOutcome(False, reason, detail)

    def accept(self, prepared: PreparedChunk, now_ns: int, current: np.ndarray) -> ChunkOutcome:
        """``current`` is the plan-space value of the command now (where a fade from nothing starts)."""
        if prepared.rejection is not None or prepared.trajectory is None:
            return self.reject(prepared.rejection or Rejection.MALFORMED, prepared.detail)
        chunk = prepared.chunk
        stamp = int(chunk.stamp_ns)  # type: ignore[arg-type]
        newest = self.stats.newest_stamp_ns
        if newest is not None and stamp == newest:
            return self.reject(Rejection.DUPLICATE, f"a chunk stamped {stamp} was already accepted")
        if newest is not None and stamp < newest:
            return self.reject(Rejection.OUT_OF_ORDER, f"stamp {stamp} is older than the newest chunk's {newest}")
        shift_ns = prepared.trajectory.start_ns - stamp  # 0, or the wait until arrival when synchronous
        due = np.array([chunk.due_ns(k) + shift_ns for k in range(chunk.horizon)])
        skipped = int(np.count_nonzero(due < now_ns))
        self.stats.skipped_actions += skipped
        if prepared.trajectory.end_ns < now_ns:
            outcome = self.reject(Rejection.EXPIRED, f"all {chunk.horizon} actions are in the past")
            return ChunkOutcome(False, outcome.reason, outcome.detail, skipped=skipped)
        self.stats.accepted += 1
        self.stats.clamped_actions += prepared.clamped
        self.stats.ik_unreachable += len(prepared.warnings)
        self.stats.newest_stamp_ns = stamp
        self.blender.add(prepared.trajectory, now_ns, current)
        return ChunkOutcome(True, skipped=skipped, clamped=prepared.clamped, warnings=prepared.warnings)

    def clear(self) -> None:
        """Forget the plan (e-stop, hand-over): motion waits for the next chunk."""
        self.blender.clear()

    # -- command source ------------------------------------------------------------------
    def tick(self, now_ns: int, command: np.ndarray, dt_s: float) -> None:
        self.blender.prune(now_ns)

    def target(self, now_ns: int, feedback: Feedback) -> np.ndarray | None:
        plan = self.blender.sample(now_ns)
        if plan is None:
            return None
        command = plan[: len(self.layout)]
        if self.tracker is not None and self.layout.base is not None:
            pose = feedback.pose()
            if pose is None:
                return None
            ahead_ns = min(now_ns + self.lookahead_ns, self.blender.end_ns)
            ahead = self.blender.sample(ahead_ns)
            goal = plan if ahead is None else ahead
            final = now_ns + self.lookahead_ns >= self.blender.end_ns
            command[self.layout.base.command_index] = self.tracker.command(pose, goal[len(self.layout):], final)
        return command
