"""sim_node: the simulated robot cell behind the same topics as the real drivers.

Publishes each arm's joint states (Interbotix layout), base odometry, camera images, task
success and /diagnostics; accepts the controller's commands on the adapters named in the
embodiment's ``outputs``; offers the sim reset service (``contract.SIM_RESET``). Physics and rendering run on their
own threads (``sim.loop``); this node only converts messages.

    python -m qwen_vla_ros.nodes.sim_node --ros-args -p config:=aloha \\
        -p config_overrides:="['outputs=[{adapter: forward_command, arms: [left, right]}]']"
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.config.hardware import Arm, ForwardCommandOutput, InterbotixOutput, JointTrajectoryOutput, TwistOutput
from qwen_vla_ros.config.sim import AlohaRandomization
from qwen_vla_ros.contract import CLOCK, DIAGNOSTICS, SIM_RANDOMIZATION, SIM_RESET, SIM_SUCCESS, NodeRole, role_view
from qwen_vla_ros.nodes.common import declare_configs, ns_to_time, run_node
from qwen_vla_ros.nodes.ros_contract import (
    Level,
    create_publisher,
    create_service,
    create_subscription,
    diagnostic_array,
    diagnostic_status,
    image_to_msg,
)
from qwen_vla_ros.sim.commands import (
    ArmCommand,
    decode_forward_command,
    decode_joint_group,
    decode_joint_single,
    decode_joint_trajectory,
)
from qwen_vla_ros.sim.kinematic import BaseState
from qwen_vla_ros.sim.loop import FrameGrabber, SimLoop
from qwen_vla_ros.sim.pacing import Pacer
from qwen_vla_ros.sim.renderer_check import renderer_problem
from qwen_vla_ros.sim.world import Simulation

FORWARD_COMMAND_OVERRIDE = "outputs=[{adapter: forward_command, arms: [%s]}]"


def _interbotix_installed() -> bool:
    try:
        import interbotix_xs_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


# Message -> ArmCommand for each command interface, bound to their arm (and Interbotix name) with partial.
def _forward_command(arm: Arm, msg: Any) -> ArmCommand:
    return decode_forward_command(msg.data, arm)


def _joint_trajectory(arm: Arm, msg: Any) -> ArmCommand:
    return decode_joint_trajectory(msg.joint_names, [p.positions for p in msg.points], arm)


def _joint_group(arm: Arm, group_name: str, msg: Any) -> ArmCommand:
    return decode_joint_group(msg.name, msg.cmd, arm, group_name)


def _joint_single(arm: Arm, gripper_name: str, msg: Any) -> ArmCommand:
    return decode_joint_single(msg.name, msg.cmd, arm, gripper_name)


class SimNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_node")
        config, _ = declare_configs(self, "aloha")
        rate_hz = self._number("rate_hz", 0.0) or config.control.rate_hz
        camera_rate_hz = self._number("camera_rate_hz", -1.0)
        if not (math.isfinite(rate_hz) and rate_hz > 0 and math.isfinite(camera_rate_hz)):
            raise ConfigError("sim_node parameters", [f"rate_hz must be > 0 (0: config) and camera_rate_hz finite, "
                                                      f"got {rate_hz} and {camera_rate_hz}"])
        self.seed = int(self.declare_parameter("seed", 0).value)
        realtime = bool(self.declare_parameter("realtime", True).value)
        self.config = config
        if config.sim is not None and config.sim.type == "mujoco_aloha":
            if camera_rate_hz == 0:
                os.environ["MUJOCO_GL"] = "disable"  # physics only: no GL library is loaded at all
            elif problem := renderer_problem():
                raise ConfigError("sim_node renderer", [problem])
        self.sim = Simulation(config, rate_hz)
        if camera_rate_hz < 0:
            camera_rate_hz = self.sim.settings.camera_rate_hz
        self.rng = np.random.default_rng(self.seed)
        self.resets = 0
        self.accepted = 0
        self.rejected = 0
        self.conditions = self.sim.reset(self.rng)

        view = role_view(NodeRole.SIM, config)
        self.outbound = {topic.name: topic for topic in view.publishes}
        self.inbound = {topic.name: topic for topic in view.subscribes}
        self.joint_publishers = {a.name: create_publisher(self, self.outbound[a.joint_state_topic]) for a in config.arms}
        self.odom_publisher = (
            create_publisher(self, self.outbound[config.require_base("sim odometry").odom_topic]) if self.sim.has_base else None
        )
        self.success_publisher = create_publisher(self, SIM_SUCCESS) if self.sim.has_task else None
        self.clock_publisher = None if realtime else create_publisher(self, CLOCK)
        self.diagnostics = create_publisher(self, DIAGNOSTICS)
        self._subscribe_commands()
        create_service(self, SIM_RESET, self._reset)
        self.randomization: AlohaRandomization | None = None  # None: the config's
        self.randomization_fields: dict = {}  # as received, echoed by every reset
        self.randomization_error: str | None = None
        create_subscription(self, SIM_RANDOMIZATION, self._on_randomization)

        grabber = self._start_cameras(camera_rate_hz)
        pacer = Pacer(period_ns=round(self.sim.period_s * 1e9), realtime=realtime)
        self.loop = SimLoop(
            self.sim, pacer, self._publish_state, self.get_clock().now().nanoseconds, grabber,
            round(1e9 / camera_rate_hz) if grabber is not None else None,
        )
        self.create_timer(1.0, self._report)
        self.loop.start()
        self.get_logger().info(
            f"simulating {config.name} ({self.sim.settings.type}) at {rate_hz:g} Hz, "
            f"{'real time' if realtime else 'free-running on /clock'}, seed {self.seed}; cameras "
            f"{self.sim.camera_names if grabber else 'off'} at {camera_rate_hz:g} Hz "
            f"{self.sim.settings.render_width}x{self.sim.settings.render_height}; conditions {self.conditions}"
        )

    def _number(self, name: str, default: float) -> float:
        """A float parameter that also accepts an integer (``rate_hz:=50``)."""
        return float(self.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value)

    # --- commands -------------------------------------------------------------------------

    def _subscribe_commands(self) -> None:
        interbotix = _interbotix_installed()
        commanded: set[str] = set()
        missing_interbotix = []
        for output in self.config.outputs:
            if isinstance(output, TwistOutput):
                create_subscription(self, self.inbound[output.topic], self._on_twist)
                continue
            for arm_name in output.arms:
                arm = self.config.arm(arm_name)
                if isinstance(output, ForwardCommandOutput):
                    self._listen(output.topic, arm, partial(_forward_command, arm))
                elif isinstance(output, JointTrajectoryOutput):
                    self._listen(output.topic, arm, partial(_joint_trajectory, arm))
                elif isinstance(output, InterbotixOutput):
                    if not interbotix:
                        missing_interbotix.append(arm_name)
                        continue
                    self._listen(output.group_topic, arm, partial(_joint_group, arm, output.group_name))
                    self._listen(output.single_topic, arm, partial(_joint_single, arm, output.gripper_name))
                commanded.add(arm_name)
        uncommanded = [a.name for a in self.config.arms if a.name not in commanded]
        if uncommanded:
            problems = [f"arms {uncommanded} have no command interface the sim can subscribe to"]
            if missing_interbotix:
                problems.append(
                    "interbotix_xs_msgs is not importable here; start the sim with config_overrides "
                    f"['{FORWARD_COMMAND_OVERRIDE % ', '.join(a.name for a in self.config.arms)}'] "
                    "and run the controller with the same override"
                )
            raise ConfigError(f"{self.config.name} outputs", problems)

    def _listen(self, template: str, arm: Arm, decode: Callable[[Any], ArmCommand]) -> None:
        topic = self.inbound[template.format(namespace=arm.namespace)]

        def on_command(msg: Any) -> None:
            try:
                command = decode(msg)
            except ValueError as exc:
                self.rejected += 1
                self.get_logger().warning(f"{topic.name}: ignored command, {exc}", throttle_duration_sec=1.0)
                return
            self.sim.command_arm(arm.name, command)
            self.accepted += 1

        create_subscription(self, topic, on_command)

    def _on_twist(self, msg: Twist) -> None:
        try:
            self.sim.command_base(msg.linear.x, msg.angular.z)
            self.accepted += 1
        except ValueError as exc:
            self.rejected += 1
            self.get_logger().warning(f"ignored Twist, {exc}", throttle_duration_sec=1.0)

    def _on_randomization(self, message: String) -> None:
        """Fields over the config's randomisation; a bad one is refused and resets fail until fixed."""
        base = getattr(self.sim.settings, "randomization", None)
        try:
            fields = json.loads(message.data)
            if base is None:
                raise ValueError(f"{self.sim.settings.type} sims have no randomization to vary")
            if not isinstance(fields, dict):
                raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
            self.randomization = AlohaRandomization.model_validate({**base.model_dump(), **fields}) if fields else None
            self.randomization_fields = fields
            self.randomization_error = None
            self.get_logger().info(f"randomization for the next resets: {fields or 'the config'}")
        except (ValueError, TypeError) as exc:
            self.randomization_error = f"{SIM_RANDOMIZATION.name}: refused {message.data!r}: {exc}"
            self.get_logger().error(self.randomization_error)

    def _reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.randomization_error is not None:
            response.success, response.message = False, self.randomization_error
            return response
        self.conditions = self.sim.reset(self.rng, self.randomization)
        self.resets += 1
        response.success = True
        response.message = json.dumps({"seed": self.seed, "reset": self.resets, **self.conditions,
                                       "randomization": self.randomization_fields})
        self.get_logger().info(f"reset {self.resets}: {self.conditions}")
        return response

    # --- state out (physics and render threads) ---------------------------------------------

    def _publish_state(self, stamp_ns: int) -> None:
        try:
            self._publish_state_messages(ns_to_time(stamp_ns))
        except Exception:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down before close() stopped the physics thread.

    def _publish_state_messages(self, stamp: Time) -> None:
        if self.clock_publisher is not None:
            self.clock_publisher.publish(Clock(clock=stamp))
        for name, state in self.sim.arm_states().items():
            msg = JointState(name=list(state.names), position=state.position.tolist(),
                             velocity=state.velocity.tolist(), effort=state.effort.tolist())
            msg.header.stamp = stamp
            self.joint_publishers[name].publish(msg)
        base = self.sim.base_state()
        if base is not None and self.odom_publisher is not None:  # both exist exactly when the sim has a base
            self.odom_publisher.publish(self._odometry(base, stamp))
        if self.success_publisher is not None:
            self.success_publisher.publish(Bool(data=bool(self.sim.success())))

    def _odometry(self, base: BaseState, stamp: Time) -> Odometry:
        settings = self.sim.settings
        msg = Odometry()
        msg.header.stamp = stamp
        msg.header.frame_id = settings.odom_frame
        msg.child_frame_id = settings.base_frame
        msg.pose.pose.position.x, msg.pose.pose.position.y = base.x, base.y
        msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(base.yaw / 2), math.cos(base.yaw / 2)
        msg.twist.twist.linear.x, msg.twist.twist.angular.z = base.linear, base.angular
        return msg

    def _start_cameras(self, rate_hz: float) -> FrameGrabber | None:
        if rate_hz <= 0 or not self.sim.camera_names:
            return None
        cameras = {c.name: c for c in self.config.cameras}
        publishers = {name: create_publisher(self, self.outbound[cameras[name].topic]) for name in self.sim.camera_names}

        def publish(frames: dict[str, np.ndarray], stamp_ns: int) -> None:
            for name, image in frames.items():
                publishers[name].publish(image_to_msg(image, cameras[name].encoding, stamp_ns, name))

        grabber = FrameGrabber(self.sim.make_renderer, publish)
        try:
            grabber.start()
        except RuntimeError as exc:
            self.get_logger().error(f"cameras disabled: {exc}; headless machines need MUJOCO_GL=egl and Mesa EGL")
            return None
        return grabber

    # --- diagnostics ------------------------------------------------------------------------

    def _report(self) -> None:
        figures = self.loop.report()
        values = {k: f"{v:.3f}" if isinstance(v, float) and not v.is_integer() else f"{v:g}" for k, v in figures.items()}
        values.update(commands_accepted=str(self.accepted), commands_rejected=str(self.rejected), resets=str(self.resets))
        level, message = Level.OK, "running"
        if self.loop.error is not None or not self.loop.running:
            level, message = Level.ERROR, f"physics stopped: {self.loop.error}"
            self.get_logger().error(message, throttle_duration_sec=5.0)
        elif self.loop.pacer.realtime and figures["wall_time_s"] > 2 and figures["real_time_factor"] < 0.9:
            level, message = Level.WARN, f"behind real time (factor {figures['real_time_factor']:.2f})"
        status = diagnostic_status(f"sim_node: {self.config.name}", message, values, level, self.sim.settings.type)
        self.diagnostics.publish(diagnostic_array([status], self.get_clock().now().nanoseconds))

    def close(self) -> None:
        self.loop.stop()
        figures = self.loop.report()
        summary = (
            f"stopped after {figures['sim_time_s']:.1f} s simulated, real-time factor "
            f"{figures['real_time_factor_total']:.3f}, {figures['dropped_steps']:g} periods dropped"
        )
        if self.context.ok():
            self.get_logger().info(summary)
        else:  # after Ctrl-C the context is gone and /rosout with it
            print(f"[sim_node] {summary}", file=sys.stderr)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
