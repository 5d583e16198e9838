"""Stand-ins for the robot drivers in control-core tests (the motors cannot exist here).

The robot follows every command perfectly: its joint states are the last command
converted back to driver units (gripper -> finger position), and a base integrates its
(v, omega) command into odometry. The seam is only what the drivers publish.
"""
from __future__ import annotations

import math

import numpy as np
from helpers.limits import JudgedLimits, judged_limits

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import load_embodiment, load_runtime
from qwen_vla_ros.control import Controller, ControlOutput

ALOHA_START = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0])
T0_NS = 1_000 * NS_PER_S


def make_controller(embodiment: str, **runtime_overrides) -> Controller:
    return Controller(load_embodiment(embodiment), load_runtime(overrides=runtime_overrides))


class FollowingRobot:
    def __init__(self, controller: Controller, start: np.ndarray | None = None):
        self.controller = controller
        layout = controller.layout
        self.positions = np.zeros(len(layout)) if start is None else np.array(start, dtype=float)
        self.pose = np.zeros(3)

    def publish(self, now_ns: int) -> None:
        layout = self.controller.layout
        for arm in layout.arms:
            names = list(arm.arm.joint_names)
            values = list(self.positions[arm.joint_index])
            if arm.gripper is not None and arm.gripper_index is not None:
                g = arm.gripper
                names.append(g.finger_joint)
                values.append(g.finger_close + self.positions[arm.gripper_index] * (g.finger_open - g.finger_close))
            self.controller.update_joint_state(arm.name, names, values, now_ns, now_ns)
        if layout.base is not None:
            twist = self.positions[layout.base.command_index]
            self.controller.update_odometry(self.pose, twist, now_ns, now_ns)

    def follow(self, output: ControlOutput | None) -> None:
        if output is None:
            return
        self.positions = output.positions.copy()
        layout = self.controller.layout
        if layout.base is not None:
            linear, angular = layout.base_command(output.positions)
            dt = self.controller.period_s
            self.pose = self.pose + dt * np.array([linear * math.cos(self.pose[2]), linear * math.sin(self.pose[2]), angular])


def run(controller: Controller, robot: FollowingRobot, start_ns: int, periods: int, chunks: dict[int, ActionChunk] | None = None,
        feedback: bool = True, policy_alive: bool = True) -> tuple[list[ControlOutput], int]:
    """Step ``periods`` periods from ``start_ns``; ``chunks`` maps a period index to a chunk submitted then.

    ``policy_alive``: the policy's heartbeat arrives every period (as policy_node's thread sends it).
    """
    outputs = []
    now = start_ns
    for index in range(periods):
        now = start_ns + index * controller.period_ns
        if policy_alive:
            controller.policy_heartbeat(now)
        if feedback:
            robot.publish(now)
        if chunks and index in chunks:
            controller.submit(chunks[index], now)
        output = controller.step(now)
        robot.follow(output)
        if output is not None:
            outputs.append(output)
    return outputs, now


def aloha_action(left: np.ndarray = ALOHA_START, gripper: float = 0.5) -> np.ndarray:
    return np.concatenate([left, [gripper], ALOHA_START, [gripper]])


def started(embodiment: str = "aloha", **runtime) -> tuple[Controller, FollowingRobot, int]:
    """A controller past its start-up ramp: it has held the start pose under a chunk that asks for it."""
    controller = make_controller(embodiment, **runtime)
    start = np.zeros(len(controller.layout))
    if embodiment in ("aloha", "aloha_mobile"):
        start[:14] = aloha_action()
    elif embodiment == "widowx":
        start = np.array([0.0, -0.5, 0.5, 0.0, 1.0, 0.0, 0.5])
    robot = FollowingRobot(controller, start)
    dt = controller.config.control.action_dt
    warm_up_s = controller.config.safety.startup_ramp_s + 0.2
    rows = np.zeros((math.ceil(warm_up_s / dt) + 2, len(controller.policy.names)))
    if embodiment in ("aloha", "aloha_mobile"):
        rows[:] = start
    elif embodiment == "widowx":
        rows[:, 6] = start[6]
    hold = ActionChunk(rows, controller.policy.names, dt, T0_NS)
    _, now = run(controller, robot, T0_NS, round(warm_up_s / controller.period_s), chunks={0: hold})
    assert not controller.safety.ramping
    return controller, robot, now + controller.period_ns


def rate_limit_violations(limits: JudgedLimits, positions: np.ndarray, stamps_ns: np.ndarray, period_s: float,
                          channels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where the commands move faster or change velocity more sharply than ``limits`` allow.

    ``limits`` come from :func:`helpers.limits.judged_limits` (the YAML file, the URDF and the
    reviewed envelope), never from the controller's own layout, so a limit the product gets
    wrong is caught rather than reproduced. The controller limits each step over the time it
    really covered, capped at the period (a late period moves less, never more), so the check
    uses the same durations from the stamps. The tolerances carry the rounding of positions
    near 1 divided by dt (or dt squared), which matters only for steps of microseconds.
    Returns boolean (steps x channels) arrays.
    """
    channels = np.ones(len(limits.names), bool) if channels is None else channels
    dt = np.minimum(np.diff(np.asarray(stamps_ns, dtype=np.int64)) / NS_PER_S, period_s)[:, None]
    velocity = np.diff(positions, axis=0) / dt
    acceleration = np.diff(velocity, axis=0) / dt[1:]
    too_fast = np.abs(velocity) > limits.velocity * (1 + 1e-9) + 1e-9 + 1e-14 / dt
    too_sharp = np.abs(acceleration) > limits.acceleration * (1 + 1e-9) + 1e-6 + 1e-14 / dt[1:] ** 2
    return too_fast & channels, too_sharp & channels


def limits_of(controller: Controller) -> JudgedLimits:
    """The independent judge's limits for this controller's command channels."""
    return judged_limits(controller.config.name, controller.layout.names)


def assert_within_limits(controller: Controller, outputs, skip_velocity_channels: bool = False) -> None:
    """Finite, inside the position bounds and the rate limits, all judged from YAML/URDF/review."""
    limits = limits_of(controller)
    positions = np.array([o.positions for o in outputs])
    assert np.all(np.isfinite(positions))
    assert np.all(positions >= limits.lower - 1e-12) and np.all(positions <= limits.upper + 1e-12)
    channels = ~controller.layout.velocity_channel if skip_velocity_channels else None
    too_fast, too_sharp = rate_limit_violations(limits, positions, np.array([o.stamp_ns for o in outputs]),
                                                controller.period_s, channels)
    assert not too_fast.any(), f"velocity limit broken at steps {np.argwhere(too_fast)[:5].tolist()}"
    assert not too_sharp.any(), f"acceleration limit broken at steps {np.argwhere(too_sharp)[:5].tolist()}"
