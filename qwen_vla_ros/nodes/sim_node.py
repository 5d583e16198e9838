"""sim_node: the simulated robot cell behind the same topics as the real drivers.

Publishes each arm's joint states (Interbotix layout), base odometry, camera images, task
success and /diagnostics; accepts the controller's commands on the adapters named in the
embodiment's ``outputs``; offers the sim reset service (``contract.SIM_RESET``). Physics and rendering run on their
own threads (``sim.loop``); this node only converts messages.

    python -m qwen_vla_ros.nodes.sim_node --ros-args -p config:=aloha \\
        -p config_overrides:="['outputs=[{adapter: forward_command, arms: [left, right]}]']"
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.config.hardware import TwistOutput
from qwen_vla_ros.contract import CLOCK, DIAGNOSTICS, SIM_RANDOMIZATION, SIM_RESET, SIM_SUCCESS, NodeRole, role_view
from qwen_vla_ros.health import Level
from qwen_vla_ros.nodes.adapters import interbotix_installed
from qwen_vla_ros.nodes.common import declare_configs, ns_to_time, run_node
from qwen_vla_ros.nodes.ros_contract import (
    create_publisher,
    create_service,
    create_subscription,
    diagnostic_array,
    diagnostic_status,
    image_to_msg,
    odometry_to_msg,
)
from qwen_vla_ros.sim.commands import (
    ArmCommand,
    CommandRoute,
    Interface,
    command_routes,
    decode_forward_command,
    decode_joint_group,
    decode_joint_single,
    decode_joint_trajectory,
)
from qwen_vla_ros.sim.loop import FrameGrabber, SimLoop
from qwen_vla_ros.sim.pacing import Pacer
from qwen_vla_ros.sim.renderer_check import renderer_problem
from qwen_vla_ros.sim.resets import Resets
from qwen_vla_ros.sim.world import Simulation

# Message -> ArmCommand for each command interface of sim.commands.
DECODERS: dict[Interface, Callable[[CommandRoute, Any], ArmCommand]] = {
    "forward_command": lambda route, msg: decode_forward_command(msg.data, route.arm),
    "joint_trajectory": lambda route, msg: decode_joint_trajectory(msg.joint_names, [p.positions for p in msg.points],
                                                                   route.arm),
    "joint_group": lambda route, msg: decode_joint_group(msg.name, msg.cmd, route.arm, route.name),
    "joint_single": lambda route, msg: decode_joint_single(msg.name, msg.cmd, route.arm, route.name),
}


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
        self.resets = Resets(self.sim, self.seed)
        self.accepted = 0
        self.rejected = 0

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
            f"{self.sim.settings.render_width}x{self.sim.settings.render_height}; conditions {self.resets.conditions}"
        )

    def _number(self, name: str, default: float) -> float:
        """A float parameter that also accepts an integer (``rate_hz:=50``)."""
        return float(self.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value)

    # --- commands -------------------------------------------------------------------------

    def _subscribe_commands(self) -> None:
        for output in self.config.outputs:
            if isinstance(output, TwistOutput):
                create_subscription(self, self.inbound[output.topic], self._on_twist)
        for route in command_routes(self.config, interbotix_installed()):
            create_subscription(self, self.inbound[route.topic], partial(self._on_arm_command, route))

    def _on_arm_command(self, route: CommandRoute, msg: Any) -> None:
        try:
            command = DECODERS[route.interface](route, msg)
        except ValueError as exc:
            self.rejected += 1
            self.get_logger().warning(f"{route.topic}: ignored command, {exc}", throttle_duration_sec=1.0)
            return
        self.sim.command_arm(route.arm.name, command)
        self.accepted += 1

    def _on_twist(self, msg: Twist) -> None:
        try:
            self.sim.command_base(msg.linear.x, msg.angular.z)
            self.accepted += 1
        except ValueError as exc:
            self.rejected += 1
            self.get_logger().warning(f"ignored Twist, {exc}", throttle_duration_sec=1.0)

    def _on_randomization(self, message: String) -> None:
        """Fields over the config's randomisation; a bad one is refused and resets fail until fixed."""
        if self.resets.vary(message.data):
            self.get_logger().info(f"randomization for the next resets: {self.resets.fields or 'the config'}")
        else:
            self.get_logger().error(str(self.resets.error))

    def _reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.resets.reset()
        if response.success:
            self.get_logger().info(f"reset {self.resets.count}: {self.resets.conditions}")
        return response

    # --- state out (physics and render threads) ---------------------------------------------

    def _publish_state(self, stamp_ns: int) -> None:
        try:
            self._publish_state_messages(stamp_ns)
        except Exception:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down before close() stopped the physics thread.

    def _publish_state_messages(self, stamp_ns: int) -> None:
        stamp = ns_to_time(stamp_ns)
        if self.clock_publisher is not None:
            self.clock_publisher.publish(Clock(clock=stamp))
        for name, state in self.sim.arm_states().items():
            msg = JointState(name=list(state.names), position=state.position.tolist(),
                             velocity=state.velocity.tolist(), effort=state.effort.tolist())
            msg.header.stamp = stamp
            self.joint_publishers[name].publish(msg)
        base = self.sim.base_state()
        if base is not None and self.odom_publisher is not None:  # both exist exactly when the sim has a base
            settings = self.sim.settings
            self.odom_publisher.publish(odometry_to_msg((base.x, base.y, base.yaw), (base.linear, base.angular),
                                                        stamp_ns, settings.odom_frame, settings.base_frame))
        if self.success_publisher is not None:
            self.success_publisher.publish(Bool(data=bool(self.sim.success())))

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
        values.update(commands_accepted=str(self.accepted), commands_rejected=str(self.rejected),
                      resets=str(self.resets.count))
        level, message = self.loop.health(figures)
        if level == Level.ERROR:
            self.get_logger().error(message, throttle_duration_sec=5.0)
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
