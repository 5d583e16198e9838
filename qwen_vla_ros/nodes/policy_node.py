"""policy_node: cameras and joint states in, action chunks out, on its own inference thread.

Subscription callbacks only check and store messages (``perception.sync``) and wake the
inference thread, which runs ``inference.runner.PolicyRunner.run``: it decides when to
infer, builds the observation, runs the model and publishes the chunk on
the action-chunk topic (``contract.ACTION_CHUNK``; stamp = observation stamp). See the README node table for topics
and parameters.

    python -m qwen_vla_ros.nodes.policy_node --ros-args -p config:=aloha -p checkpoint:=/path/to/ckpt
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from nav_msgs.msg import Odometry as OdometryMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.config import ConfigError, RuntimeConfig
from qwen_vla_ros.contract import ACTION_CHUNK, COMMITTED, DIAGNOSTICS, INSTRUCTION, MODE, NodeRole, role_view
from qwen_vla_ros.errors import MalformedMessageError, QwenVlaError
from qwen_vla_ros.inference.runner import PolicyRunner
from qwen_vla_ros.inference.scheduler import POLICY
from qwen_vla_ros.log import KeyedThrottle
from qwen_vla_ros.nodes.common import declare_configs, joint_positions, run_node, time_to_ns
from qwen_vla_ros.nodes.heartbeat import Heartbeat, PolicyHeartbeat
from qwen_vla_ros.nodes.ros_contract import (
    Level,
    chunk_to_trajectory,
    create_publisher,
    create_subscription,
    diagnostic_array,
    diagnostic_status,
    msg_to_image,
    trajectory_to_committed,
)
from qwen_vla_ros.perception.images import ImageHeader, header_problem, model_rgb, size_mismatch
from qwen_vla_ros.perception.state import Odometry, StateAssembler
from qwen_vla_ros.perception.sync import FAULTS, ObservationSync

if TYPE_CHECKING:  # torch is imported only when a policy is loaded
    from qwen_vla_ros.model.policy import Policy

IMAGE_WARNING_PERIOD_S = 5.0


def load_policy_for(checkpoint: str, runtime: RuntimeConfig) -> Policy:
    """The model, set up as the runtime config says; any checkpoint problem is a ConfigError (exit 2)."""
    if not checkpoint:
        raise ConfigError("policy_node", ["no checkpoint: set the 'checkpoint' parameter or 'checkpoint' in the runtime config"])
    from qwen_vla_ros.model.checkpoint import read_checkpoint
    from qwen_vla_ros.model.loading import load_policy_from_config

    try:
        read_checkpoint(checkpoint)  # every file is checked before torch loads: a wrong path fails at once
        return load_policy_from_config(runtime.model_copy(update={"checkpoint": checkpoint}))
    except (OSError, QwenVlaError, ImportError) as exc:  # missing files, CheckpointError, bad option, absent backend
        raise ConfigError(f"checkpoint {checkpoint}", [str(exc)]) from exc


class PolicyNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("policy_node", **kwargs)
        embodiment, runtime = declare_configs(self, "aloha")
        checkpoint: str = self.declare_parameter("checkpoint", "").value or runtime.checkpoint or ""
        instruction: str = self.declare_parameter("instruction", "").value or runtime.instruction
        seed = int(self.declare_parameter("seed", -1).value)
        policy = load_policy_for(checkpoint, runtime)
        self.config = embodiment
        self.cameras = {c.name: c for c in embodiment.cameras}
        self.input_size = (policy.patch_spec.height, policy.patch_spec.width)
        self.sync = ObservationSync(list(self.cameras), StateAssembler(embodiment), runtime.sync)
        self.chunk_pub = create_publisher(self, ACTION_CHUNK)
        self.diagnostics_pub = create_publisher(self, DIAGNOSTICS)
        try:
            self.runner = PolicyRunner(
                policy, embodiment, runtime, self.sync, self._decode, self._publish, self._now_ns, self.get_logger(),
                instruction, seed if seed >= 0 else None,
            )
        except QwenVlaError as exc:  # the checkpoint or backend does not serve this embodiment or instruction
            raise ConfigError(f"checkpoint {checkpoint}", [str(exc)]) from exc
        self.image_counts: dict[str, Counter] = {name: Counter() for name in self.cameras}
        self.image_throttle = KeyedThrottle(IMAGE_WARNING_PERIOD_S)
        self.committed_rejected = 0
        self._wake = threading.Event()
        self._stop = threading.Event()

        inbound = {topic.name: topic for topic in role_view(NodeRole.POLICY, embodiment).subscribes}
        for name, camera in self.cameras.items():
            create_subscription(self, inbound[camera.topic], partial(self._on_image, name))
        for arm in embodiment.arms:
            if arm.name in self.sync.assembler.arms:
                create_subscription(self, inbound[arm.joint_state_topic], partial(self._on_joints, arm.name))
        if self.sync.assembler.needs_base:
            create_subscription(self, inbound[embodiment.require_base("policy odometry").odom_topic], self._on_odometry)
        create_subscription(self, COMMITTED, self._on_committed)
        create_subscription(self, MODE, self._on_mode)
        create_subscription(self, INSTRUCTION, self._on_instruction)
        self.heartbeat = Heartbeat(self, runtime.clock_check)
        self.default_instruction = runtime.instruction
        self.add_on_set_parameters_callback(self._on_parameters)
        self.create_timer(1.0, self._report)
        # Liveness for the controller's watchdog, from a thread of its own, before the first chunk can exist.
        self.liveness = PolicyHeartbeat(self, embodiment.safety.policy_timeout_s)
        self.worker = threading.Thread(target=self.runner.run, args=(self._stop, self._wake, self.context.ok),
                                       name="policy_inference", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"{embodiment.name}: {len(self.cameras)} cameras -> {self.input_size[1]}x{self.input_size[0]}, "
            f"{len(embodiment.action.names)} action channels, trigger {runtime.schedule.trigger}, "
            f"RTC {'on' if self.runner.rtc else 'off'}, checkpoint {checkpoint}"
        )

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # ------------------------------------------------------------------ inputs
    def _on_image(self, camera: str, msg: Image) -> None:
        counts = self.image_counts[camera]
        header = ImageHeader(msg.encoding, msg.width, msg.height, msg.step, len(msg.data))
        problem = header_problem(camera, header)
        if problem is not None:
            counts["rejected"] += 1
            self.sync.drop_camera(camera)
            if self.image_throttle.ready((camera, "rejected"), self._now_ns()):
                self.get_logger().error(f"frame dropped: {problem}")
            return
        expected = self.cameras[camera]
        mismatch = size_mismatch(camera, header, expected.width, expected.height)
        if mismatch is not None:
            if not counts["resized"]:  # a steady state (e.g. the sim renders smaller): say it once, count it
                self.get_logger().warning(mismatch)
            counts["resized"] += 1
        counts["frames"] += 1
        self.sync.add_frame(camera, time_to_ns(msg.header.stamp), msg, self._now_ns())
        self._wake.set()

    def _decode(self, camera: str, msg: Image) -> np.ndarray:
        return model_rgb(msg_to_image(msg), msg.encoding, *self.input_size)

    def _on_joints(self, arm: str, msg: JointState) -> None:
        self.sync.add_joints(arm, time_to_ns(msg.header.stamp), joint_positions(msg), self._now_ns())
        self._wake.set()

    def _on_odometry(self, msg: OdometryMsg) -> None:
        odometry = Odometry(msg.twist.twist.linear.x, msg.twist.twist.angular.z)
        self.sync.add_odometry(time_to_ns(msg.header.stamp), odometry, self._now_ns())
        self._wake.set()

    def _on_committed(self, msg: JointTrajectory) -> None:
        try:
            self.runner.committed.add(*trajectory_to_committed(msg))
        except MalformedMessageError as exc:
            self.committed_rejected += 1
            self.get_logger().warning(f"{COMMITTED.name} ignored: {exc}", throttle_duration_sec=5.0)

    def _on_mode(self, msg: String) -> None:
        try:
            self.runner.set_mode(msg.data)
        except MalformedMessageError as exc:
            self.get_logger().error(f"{MODE.name}: {exc}; keeping mode {self.runner.scheduler.mode!r}")
        self._wake.set()

    def _on_instruction(self, msg: String) -> None:
        self.runner.set_instruction(msg.data)
        self._wake.set()

    def _on_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """``ros2 param set /policy_node instruction ...`` acts like the topic; empty: the runtime config's."""
        for parameter in parameters:
            if parameter.name == "instruction":
                self.runner.set_instruction(str(parameter.value) or self.default_instruction)
                self._wake.set()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ outputs
    def _publish(self, chunk: ActionChunk) -> None:
        self.chunk_pub.publish(chunk_to_trajectory(chunk))

    # ------------------------------------------------------------------ diagnostics
    def _report(self) -> None:
        now_ns = self._now_ns()
        figures = self.runner.figures(now_ns)
        figures.update(self.heartbeat.figures())
        figures["committed_rejected"] = self.committed_rejected
        for camera, counts in self.image_counts.items():
            figures.update({f"{kind}.{camera}": counts[kind] for kind in ("frames", "rejected", "resized")})
        level, message = Level.OK, "inferring" if figures["mode"] == POLICY else f"mode {figures['mode']}"
        skip = self.runner.last_skip
        if figures["mode"] == POLICY and figures["chunks_per_s"] == 0 and skip is not None:
            level = Level.ERROR if skip.reason not in FAULTS else Level.WARN
            message = f"no chunks: {skip.message}"
        status = diagnostic_status(f"policy_node: {self.config.name}", message, figures, level, self.config.name)
        self.diagnostics_pub.publish(diagnostic_array([status], self._now_ns()))

    def close(self) -> None:
        self.liveness.stop()
        self._stop.set()
        self._wake.set()
        self.worker.join(timeout=10.0)


def main(args: Sequence[str] | None = None) -> int:
    # Callbacks only store messages, inference has its own thread (docs/architecture.md, "Executors and timing").
    return run_node(PolicyNode, args, executor_factory=SingleThreadedExecutor)


if __name__ == "__main__":
    raise SystemExit(main())
