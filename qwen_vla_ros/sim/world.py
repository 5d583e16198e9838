"""One simulated robot cell built from an embodiment config: arms, base, cameras, task.

The ``sim`` section picks how the arms are simulated (MuJoCo ALOHA or kinematic mock
hardware); a ``base`` section, when present, adds a kinematic differential base whatever the
arms are, so Mobile ALOHA gets MuJoCo arms on a simulated base. Every method takes
``lock``, so ROS callbacks (commands, reset) and the physics thread never interleave.
"""
from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.loader import ConfigError
from qwen_vla_ros.config.sim import AlohaRandomization, KinematicArmSim, KinematicBaseSim, MujocoAlohaSim
from qwen_vla_ros.embodiments.kinematics import ArmKinematics
from qwen_vla_ros.sim.commands import ArmCommand, ArmState
from qwen_vla_ros.sim.kinematic import BaseState, KinematicArm, KinematicBase
from qwen_vla_ros.sim.synthetic import SyntheticRenderer, SyntheticScene


class FrameRenderer(Protocol):
    def render(self, snapshot: Any) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _translation(transform: np.ndarray) -> tuple[float, float, float]:
    x, y, z = transform[:3, 3]
    return float(x), float(y), float(z)


class Simulation:
    """Arms (MuJoCo or kinematic) plus an optional kinematic base, advanced one control period per step."""

    def __init__(self, config: EmbodimentConfig, rate_hz: float | None = None) -> None:
        settings = config.sim
        if settings is None:
            raise ConfigError(config.name, [f"embodiment {config.name!r} has no sim section to simulate"])
        self.config = config
        self.settings = settings
        self.lock = threading.RLock()
        period_s = 1.0 / (rate_hz or config.control.rate_hz)
        self._mujoco = None
        self._arms: dict[str, KinematicArm] = {}
        if isinstance(settings, MujocoAlohaSim):
            from qwen_vla_ros.sim.aloha import MujocoAloha  # mujoco only where it is needed

            self._mujoco = MujocoAloha(config, period_s)
        elif isinstance(settings, KinematicArmSim):
            self._arms = {
                arm.name: KinematicArm(arm, settings.initial_joints.get(arm.name), settings.initial_gripper)
                for arm in config.arms
            }
            self._kinematics = {arm.name: ArmKinematics.from_config(arm) for arm in config.arms}
        elif isinstance(settings, KinematicBaseSim) and config.arms:
            raise ConfigError(config.name, ["sim type kinematic_base simulates no arms; use kinematic_arm"])
        self._base = KinematicBase(config.base, settings.cmd_vel_timeout_s) if config.base is not None else None
        self.period_s = period_s
        self.time_s = 0.0

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.config.arms]

    @property
    def has_base(self) -> bool:
        return self._base is not None

    @property
    def has_task(self) -> bool:
        return self._mujoco is not None

    @property
    def camera_names(self) -> list[str]:
        if self._mujoco is not None:
            return list(self._mujoco.cameras)
        return [c.name for c in self.config.cameras]

    @property
    def mujoco(self):
        """The MuJoCo cell, for tests and benchmarks that inspect physics (None for kinematic sims)."""
        return self._mujoco

    def command_arm(self, arm_name: str, command: ArmCommand) -> None:
        with self.lock:
            if self._mujoco is not None:
                self._mujoco.command(arm_name, command)
            else:
                self._arms[arm_name].command(command)

    def command_base(self, linear: float, angular: float) -> None:
        if self._base is None:
            raise ValueError(f"embodiment {self.config.name!r} has no base to command")
        with self.lock:
            self._base.command(linear, angular, self.time_s)

    def step(self) -> None:
        with self.lock:
            if self._mujoco is not None:
                self._mujoco.step()
            for arm in self._arms.values():
                arm.step(self.period_s)
            self.time_s += self.period_s
            if self._base is not None:
                self._base.step(self.period_s, self.time_s)

    def arm_states(self) -> dict[str, ArmState]:
        with self.lock:
            if self._mujoco is not None:
                return {name: self._mujoco.state(name) for name in self.arm_names}
            return {name: arm.state() for name, arm in self._arms.items()}

    def base_state(self) -> BaseState | None:
        with self.lock:
            return self._base.state() if self._base is not None else None

    def success(self) -> bool | None:
        """Task success where the sim has a task (MuJoCo), else None."""
        with self.lock:
            return self._mujoco.success() if self._mujoco is not None else None

    def reset(self, rng: np.random.Generator, randomization: AlohaRandomization | None = None) -> dict[str, Any]:
        """Back to the start pose with new task conditions; returns the conditions drawn.
        ``randomization`` replaces the config's for this reset (MuJoCo cells only)."""
        with self.lock:
            conditions: dict[str, Any] = {}
            if self._mujoco is not None:
                conditions = self._mujoco.reset(rng, randomization)
            for arm in self._arms.values():
                arm.reset()
            if self._base is not None:
                self._base.reset()
            return conditions

    def snapshot(self) -> Any:
        """What the renderer needs to draw the current instant; taken on the physics thread."""
        with self.lock:
            if self._mujoco is not None:
                return self._mujoco.snapshot()
            base = self._base.state() if self._base is not None else None
            return SyntheticScene(
                end_effectors={
                    name: _translation(self._kinematics[name].forward(arm.joint_positions)) for name, arm in self._arms.items()
                },
                grippers={name: g for name, arm in self._arms.items() if (g := arm.gripper_normalized) is not None},
                base_pose=(base.x, base.y, base.yaw) if base is not None else None,
            )

    def make_renderer(self) -> FrameRenderer:
        """Call on the render thread (a GL context binds to the thread that creates it)."""
        width, height = self.settings.render_width, self.settings.render_height
        if self._mujoco is not None:
            return self._mujoco.make_renderer(width, height)
        return SyntheticRenderer(self.config.cameras, width, height)
