"""The controller's hand-back at shutdown: (sleep pose,) hold, and only then stop commanding.

SIGINT and SIGTERM would shut rclpy's context down at once, and with it every publisher, so
the last command sent would be whatever the arms were doing. This module takes those
signals over (in the main thread, after ``rclpy.init``): the first starts the hand-back on
a thread of its own while the executor keeps delivering joint states: with
``hand_back.sleep_pose`` the arms first go to the drivers' ``joint_sleep_positions`` (as
``get_robot_info`` reported them at the preflight), then the controller holds, waits until
every arm channel is at rest (:func:`qwen_vla_ros.control.hand_back.at_rest`), stops the
control loop and only then shuts the context down. A second signal shuts down at once;
``hand_back.timeout_s`` bounds the whole sequence.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from rclpy.node import Node

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.config.hardware import StartPose
from qwen_vla_ros.control import Controller
from qwen_vla_ros.control.hand_back import at_rest, sleep_pose
from qwen_vla_ros.control.loop import ControlLoop
from qwen_vla_ros.control.start_pose import StartPoseSource

SLEEP_SOURCE = "sleep_pose"


class HandBack:
    def __init__(self, node: Node, core: Controller, lock: Any, loop: ControlLoop[Any], config: EmbodimentConfig,
                 sleep_positions: Mapping[str, Sequence[float]], commanding: bool, sim_time: bool):
        """``lock`` guards ``core``; ``commanding``: the loop was started (a refused preflight never starts it).
        Under ``sim_time`` the loop steps with /clock, which stops with sim_node at the same shutdown: the arms
        are simulated, so the hand-back holds and stops without waiting for a rest that may never be computed."""
        self.node, self.core, self.lock, self.loop = node, core, lock, loop
        self.settings, self.commanding, self.sim_time = config.hand_back, commanding, sim_time
        self.requested = threading.Event()
        self.sleep_source: StartPoseSource | None = None
        if self.settings.sleep_pose:
            # Without a start pose, the start pose's own default arrival tolerance.
            tolerance = (config.start_pose.tolerance_rad if config.start_pose is not None
                         else StartPose.model_fields["tolerance_rad"].default)
            pose, problems = sleep_pose(config, sleep_positions, tolerance)
            for problem in problems:
                node.get_logger().warning(f"hand-back: {problem}; that arm only holds")
            if pose is None:
                node.get_logger().warning("hand-back: sleep_pose is set but no driver reported sleep positions: "
                                          "the arms only hold")
            else:
                self.sleep_source = StartPoseSource(core.layout, pose, SLEEP_SOURCE)
                core.add_source(self.sleep_source)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._on_signal)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested.is_set():  # a second signal: stop now
            self.node.context.try_shutdown()
            return
        self.requested.set()
        threading.Thread(target=self._hand_back_then_shut_down, name="hand_back", daemon=True).start()

    def _hand_back_then_shut_down(self) -> None:
        try:
            self.run()
        finally:
            self.node.context.try_shutdown()

    def run(self) -> None:
        """The sequence: sleep pose (if set), hold, at rest, loop stopped."""
        log = self.node.get_logger()
        if not self.commanding:
            return
        deadline = time.monotonic() + self.settings.timeout_s
        with self.lock:
            can_move = self.core.safety.started and not self.core.estop and not self.sim_time
            if can_move and self.sleep_source is not None:
                self.sleep_source.begin(self.core.safety.position)
                self.core.select_source(self.sleep_source.name)
        if can_move and self.sleep_source is not None:
            log.info("hand-back: moving to the sleep pose")
            source = self.sleep_source
            if not self._wait(deadline, lambda: source.arrived(self.core.feedback.measured(), self.core.safety.position)):
                log.error("hand-back: the sleep pose was not reached in time; holding where the arms are")
        with self.lock:
            self.core.select_source(None)
        log.info("hand-back: holding")
        if self.sim_time:
            self.loop.stop()
            log.info("hand-back: simulated time, commands stopped without waiting for rest")
            return
        started = self.core.safety.started
        time.sleep(2 * self.core.period_s)  # the hold reaches the command
        rested = started and self._wait(deadline, self._at_rest)
        self.loop.stop()
        if rested:
            log.info("hand-back: the arms hold at rest; commands stopped")
        elif started:
            log.error(f"hand-back: the arms were not at rest after {self.settings.timeout_s:g} s; commands stopped")

    def _at_rest(self) -> bool:
        state = self.core.safety.state
        return state is not None and at_rest(self.core.layout, state.velocity, self.settings.rest_velocity)

    def _wait(self, deadline: float, done: Callable[[], bool]) -> bool:
        while time.monotonic() < deadline:
            with self.lock:
                if done():
                    return True
            time.sleep(self.core.period_s)
        return False
