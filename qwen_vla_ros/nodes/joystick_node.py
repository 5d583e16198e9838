"""joystick_node: a Linux joystick as sensor_msgs/Joy on relative ``joy``, for machines without ROS's ``joy`` package.

Thin shell over :class:`qwen_vla_ros.teleop.joystick.JoystickReader`, which follows joy_node's
conventions (axes in -1..1 with up/left positive, deadzone, autorepeat, joydev button
numbering) and keeps retrying a missing or unplugged device. The reader runs on its own
thread (blocking in ``select``); rclpy publishers may be used from any thread.

Parameters: ``device_path`` (``/dev/input/eventN`` or a by-id link; empty: by name),
``device_name`` (exact evdev name; empty: the first joystick), ``deadzone`` (0.05),
``autorepeat_rate`` (Hz, 20; 0 = only on change), ``retry_period_s`` (1.0), ``frame_id`` (joy).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Joy

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.contract import JOY_QOS, JOYSTICK_OUTPUT
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.nodes.common import run_node
from qwen_vla_ros.nodes.ros_contract import PUBLISHER_QOS
from qwen_vla_ros.teleop.joystick import Device, JoyState, JoystickReader, open_joystick


class JoystickNode(Node):
    def __init__(self, open_device: Callable[[], Device] | None = None, context: Context | None = None) -> None:
        """``open_device`` replaces :func:`open_joystick` (tests without ``/dev/uinput``)."""
        super().__init__("joystick_node", context=context)
        path = str(self.declare_parameter("device_path", "").value)
        name = str(self.declare_parameter("device_name", "").value)
        self.frame_id = str(self.declare_parameter("frame_id", "joy").value)
        # Relative, as joy_node's, so bringup remaps it onto the embodiment's teleop.joy_topic.
        self.publisher = self.create_publisher(Joy, JOYSTICK_OUTPUT, PUBLISHER_QOS[JOY_QOS])
        try:
            self.reader = JoystickReader(
                # evdev annotates InputDevice.path as str | bytes and capabilities() as overloads, so its stubs
                # miss the Device protocol the reader uses (which a real InputDevice fulfils).
                open_device or partial(open_joystick, path, name),  # type: ignore[arg-type]
                self._publish,
                self.get_logger(),
                deadzone=float(self.declare_parameter("deadzone", 0.05).value),
                autorepeat_rate=float(self.declare_parameter("autorepeat_rate", 20.0).value),
                retry_period_s=float(self.declare_parameter("retry_period_s", 1.0).value),
            )
        except InvalidArgumentError as exc:
            raise ConfigError("joystick_node parameters", [str(exc)]) from exc
        self._stop = threading.Event()
        # SIGINT/SIGTERM shut the context down before run_node closes the node: stop the reader
        # first, or its next retry logs through a shut-down context.
        self.context.on_shutdown(self._stop.set)
        self._thread = threading.Thread(target=self.reader.run, args=(self._stop,), name="joystick", daemon=True)
        self._thread.start()
        source = path or (f"the device named {name!r}" if name else "the first joystick")
        self.get_logger().info(f"publishing {self.publisher.topic_name} from {source}")

    def _publish(self, state: JoyState) -> None:
        message = Joy(axes=list(state.axes), buttons=list(state.buttons))
        message.header.stamp = self.get_clock().now().to_msg()
        message.header.frame_id = self.frame_id
        self.publisher.publish(message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(JoystickNode, args, executor_factory=SingleThreadedExecutor)


if __name__ == "__main__":
    raise SystemExit(main())
