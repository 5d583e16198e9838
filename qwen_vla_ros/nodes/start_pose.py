"""The controller's ``move_to_start`` service: the start pose, confirmed from joint states, then the policy.

A request selects :class:`~qwen_vla_ros.control.start_pose.StartPoseSource` (chunks that
arrive meanwhile are refused as ``inactive``) and is answered at once; a thread then waits
until the measured joints are within ``start_pose.tolerance_rad`` or ``start_pose.timeout_s``
has passed, and only on arrival hands control back to the policy with its old plan dropped.
Between trials (the arms holding because a trial ended) the move is allowed too, and the arms
then stay at the pose until the next trial starts. A move that does not arrive leaves the
arms holding. The outcome, with the measured error, is published latched on
``contract.START_POSE``. In simulation the same service runs
against sim_node's joint states.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.contract import MOVE_TO_START, START_POSE
from qwen_vla_ros.control import Controller
from qwen_vla_ros.control.start_pose import StartPoseSource
from qwen_vla_ros.nodes.ros_contract import create_publisher, create_service


class StartPoseService:
    def __init__(self, node: Node, core: Controller, lock: Any, config: EmbodimentConfig):
        """``lock`` guards ``core`` (the control loop's lock)."""
        self.node, self.core, self.lock = node, core, lock
        self.source = StartPoseSource(core.layout, config.start_pose) if config.start_pose is not None else None
        if self.source is not None:
            core.add_source(self.source)
        self.busy = threading.Lock()
        self.publisher = create_publisher(node, START_POSE)
        create_service(node, MOVE_TO_START, self._on_request, callback_group=ReentrantCallbackGroup())

    def _on_request(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Start the move and answer at once; the outcome follows on ``contract.START_POSE``. The wait runs on a
        thread of its own: the controller's executor may run one callback at a time (the EventsExecutor), and a
        blocked callback would stop the joint states that confirm the arrival."""
        response.success, response.message = self._start()
        log = self.node.get_logger()
        (log.info if response.success else log.error)(f"start pose: {response.message}")
        return response

    def _start(self) -> tuple[bool, str]:
        source = self.source
        if source is None:
            return False, f"{self.core.config.name} has no start_pose in its config"
        if not self.busy.acquire(blocking=False):
            return False, "a move to the start pose is already running"
        with self.lock:
            refusal = self._refusal()
            if not refusal:
                source.begin(self.core.safety.position)
                self.core.select_source(source.name)
        if refusal:
            self.busy.release()
            return False, refusal
        threading.Thread(target=self._finish, args=(source,), name="start_pose", daemon=True).start()
        return True, (f"moving to the start pose (tolerance {source.pose.tolerance_rad:g} rad, timeout "
                      f"{source.pose.timeout_s:g} s); the outcome follows on {START_POSE.name}")

    def _finish(self, source: StartPoseSource) -> None:
        """Wait for the arrival, then hand over to the policy (or, between trials, hold there), publish the outcome.
        Arrived means the move was not interrupted, so the arbiter is still in the mode it started from: ``policy``,
        or ``hold`` after a trial's end (the only hold :meth:`_refusal` lets through)."""
        try:
            arrived, interrupted = self._wait(source)
            with self.lock:
                errors = source.errors(self.core.feedback.measured())
                if arrived and self.core.arbiter.mode == "policy":
                    self.core.policy.clear()  # chunks planned before the move belong to another pose
                    self.core.select_source(self.core.policy.name)
                elif not interrupted:
                    self.core.select_source(None)  # hold at the pose until the trial starts, or where the move got to
            outcome = {"pose": source.pose.joints, "arrived": arrived, "interrupted": interrupted,
                       "error_rad": {arm: round(error, 5) for arm, error in errors.items()}}
            message = json.dumps(outcome)
            self.publisher.publish(String(data=message))
            log = self.node.get_logger()
            (log.info if arrived else log.error)(f"start pose: {message}")
        finally:
            self.busy.release()

    def _wait(self, source: StartPoseSource) -> tuple[bool, bool]:
        """(arrived, interrupted): arrived within the timeout, or taken over by an operator or an e-stop."""
        deadline = time.monotonic() + source.pose.timeout_s
        while time.monotonic() < deadline and self.node.context.ok():
            time.sleep(self.core.period_s)
            with self.lock:
                if self.core.active != source.name or self.core.estop:
                    return False, True
                if (self.core.feedback.fresh(self.node.get_clock().now().nanoseconds)
                        and source.arrived(self.core.feedback.measured(), self.core.safety.position)):
                    return True, False
        return False, False

    def _refusal(self) -> str:
        core = self.core
        if core.estop:
            return "the e-stop is latched"
        if core.arbiter.mode == "teleop":
            return "arbitration is in teleop: the operator has the arms"
        if core.arbiter.mode == "hold" and not core.arbiter.trial_hold:
            return "the arms hold after a takeover or an e-stop: resume_policy first"
        if not core.safety.started:
            return "no joint states yet (the controller has not started commanding)"
        return ""
