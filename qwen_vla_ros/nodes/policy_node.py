"""policy_node: cameras and joint states in, action chunks out, on its own inference thread.

Subscription callbacks only check and store messages (``perception.sync``); a dedicated
thread runs ``inference.runner.PolicyRunner.step`` over and over, which decides when to
infer, builds the observation, runs the model and publishes the chunk on
/qwen_vla/action_chunk (stamp = observation stamp). See the README node table for topics
and parameters.

    python -m qwen_vla_ros.nodes.policy_node --ros-args -p config:=aloha -p checkpoint:=/path/to/ckpt
"""
from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry as OdometryMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.config import ConfigError, RuntimeConfig
from qwen_vla_ros.inference.runner import PolicyRunner, StepOutcome
from qwen_vla_ros.inference.scheduler import POLICY
from qwen_vla_ros.log import KeyedThrottle
from qwen_vla_ros.nodes.common import (
    chunk_to_trajectory,
    declare_configs,
    duration_to_seconds,
    joint_positions,
    msg_to_image,
    run_node,
    time_to_ns,
)
from qwen_vla_ros.nodes.heartbeat import Heartbeat
from qwen_vla_ros.perception.images import ImageHeader, header_problem, model_rgb, size_mismatch
from qwen_vla_ros.perception.state import Odometry, StateAssembler
from qwen_vla_ros.perception.sync import FAULTS, ObservationSync

CHUNK_TOPIC = "/qwen_vla/action_chunk"
COMMITTED_TOPIC = "/qwen_vla/controller/committed"
MODE_TOPIC = "/qwen_vla/mode"
INSTRUCTION_TOPIC = "/qwen_vla/instruction"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Best effort matches reliable and best-effort drivers, and a retransmitted frame would be late;
# a few frames deep (the sensor-data default) so a busy executor does not lose frames the sync pairs.
CAMERA_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
IMAGE_WARNING_PERIOD_S = 5.0


def load_policy_for(checkpoint: str, runtime: RuntimeConfig) -> object:
    """The model, set up as the runtime config says; any checkpoint problem is a ConfigError (exit 2)."""
    if not checkpoint:
        raise ConfigError("policy_node", ["no checkpoint: set the 'checkpoint' parameter or 'checkpoint' in the runtime config"])
    from qwen_vla_ros.model.checkpoint import read_checkpoint
    from qwen_vla_ros.model.loading import load_policy_from_config

    try:
        read_checkpoint(checkpoint)  # every file is checked before torch loads: a wrong path fails at once
        return load_policy_from_config(runtime.model_copy(update={"checkpoint": checkpoint}))
    except (OSError, ValueError, KeyError, ImportError) as exc:  # missing files, CheckpointError, bad or absent backend
        raise ConfigError(f"checkpoint {checkpoint}", [str(exc)]) from exc


class PolicyNode(Node):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("policy_node", **kwargs)
        embodiment, runtime = declare_configs(self, "aloha")
        checkpoint = self.declare_parameter("checkpoint", "").value or runtime.checkpoint or ""
        instruction = self.declare_parameter("instruction", "").value or runtime.instruction
        seed = int(self.declare_parameter("seed", -1).value)
        policy = load_policy_for(checkpoint, runtime)
        self.config = embodiment
        self.cameras = {c.name: c for c in embodiment.cameras}
        self.input_size = (policy.patch_spec.height, policy.patch_spec.width)
        self.sync = ObservationSync(list(self.cameras), StateAssembler(embodiment), runtime.sync)
        self.chunk_pub = self.create_publisher(JointTrajectory, CHUNK_TOPIC, RELIABLE)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        try:
            self.runner = PolicyRunner(
                policy, embodiment, runtime, self.sync, self._decode, self._publish, self._now_ns, self.get_logger(),
                instruction, seed if seed >= 0 else None,
            )
        except (KeyError, ValueError) as exc:  # the checkpoint does not serve this embodiment or instruction
            raise ConfigError(f"checkpoint {checkpoint}", [str(exc)]) from exc
        self.image_counts: dict[str, Counter] = {name: Counter() for name in self.cameras}
        self.image_throttle = KeyedThrottle(IMAGE_WARNING_PERIOD_S)
        self.committed_rejected = 0
        self._wake = threading.Event()
        self._stop = threading.Event()

        for name, camera in self.cameras.items():
            self.create_subscription(Image, camera.topic, lambda m, n=name: self._on_image(n, m), CAMERA_QOS)
        for arm in embodiment.arms:
            if arm.name in self.sync.assembler.arms:
                self.create_subscription(JointState, arm.joint_state_topic, lambda m, a=arm.name: self._on_joints(a, m),
                                         qos_profile_sensor_data)
        if self.sync.assembler.needs_base:
            self.create_subscription(OdometryMsg, embodiment.base.odom_topic, self._on_odometry, qos_profile_sensor_data)
        self.create_subscription(JointTrajectory, COMMITTED_TOPIC, self._on_committed, RELIABLE)
        self.create_subscription(String, MODE_TOPIC, self._on_mode, LATCHED)
        self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, RELIABLE)
        self.heartbeat = Heartbeat(self, runtime.clock_check)
        self.default_instruction = runtime.instruction
        self.add_on_set_parameters_callback(self._on_parameters)
        self.create_timer(1.0, self._report)
        self.worker = threading.Thread(target=self._run, name="policy_inference", daemon=True)
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

    def _decode(self, camera: str, msg: Image) -> object:
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
            self.runner.committed.add(
                time_to_ns(msg.header.stamp), msg.joint_names,
                [duration_to_seconds(p.time_from_start) for p in msg.points], [p.positions for p in msg.points],
            )
        except ValueError as exc:
            self.committed_rejected += 1
            self.get_logger().warning(f"{COMMITTED_TOPIC} ignored: {exc}", throttle_duration_sec=5.0)

    def _on_mode(self, msg: String) -> None:
        try:
            self.runner.set_mode(msg.data)
        except ValueError as exc:
            self.get_logger().error(f"{MODE_TOPIC}: {exc}; keeping mode {self.runner.scheduler.mode!r}")
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

    # ------------------------------------------------------------------ inference thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                result = self.runner.step()
            except Exception:  # noqa: BLE001 - the inference thread must outlive any one failure
                self.get_logger().error(f"inference step failed:\n{traceback.format_exc()}", throttle_duration_sec=5.0)
                self._stop.wait(1.0)
                continue
            if result.outcome not in (StepOutcome.WAIT, StepOutcome.SKIPPED):
                continue
            due_in = self.runner.scheduler.wait_s(self._now_ns())
            if due_in > 0:
                self._stop.wait(due_in)  # nothing can be due before then
            else:
                self._wake.wait(0.05)  # due, but no usable observation yet: wait for new input

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
        level, message = DiagnosticStatus.OK, "inferring" if figures["mode"] == POLICY else f"mode {figures['mode']}"
        skip = self.runner.last_skip
        if figures["mode"] == POLICY and figures["chunks_per_s"] == 0 and skip is not None:
            level = DiagnosticStatus.ERROR if skip.reason not in FAULTS else DiagnosticStatus.WARN
            message = f"no chunks: {skip.message}"
        status = DiagnosticStatus(level=level, name=f"policy_node: {self.config.name}", message=message,
                                  hardware_id=self.config.name,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in figures.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.worker.join(timeout=10.0)


def main(args: Sequence[str] | None = None) -> int:
    # Callbacks only store messages and inference has its own thread: one executor thread is
    # enough and costs far less per camera frame than rclpy's multi-threaded executor.
    return run_node(PolicyNode, args, executor_factory=SingleThreadedExecutor)


if __name__ == "__main__":
    raise SystemExit(main())
