"""What every node shares: message <-> numpy conversion, config parameters, and the main loop.

Conversions are kept here, once, so the policy, controllers, sim and recorder agree on
the action-chunk contract and on image layout. Images are filled from bytes
(``ndarray.tobytes()``, 0.2 ms for 640x480x3) and read with ``np.frombuffer`` (no copy);
assigning an ndarray to ``msg.data`` costs ~54 ms per frame.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration, Time
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.chunk import NS_PER_S, ActionChunk
from qwen_vla_ros.config import ConfigError, EmbodimentConfig, RuntimeConfig, load_embodiment, load_runtime
from qwen_vla_ros.config.loader import parse_override
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.ros_env import apply_dds_profile, rclpy_origin_problem, security_problem, security_requested

EXIT_BAD_CONFIG = 2
RCLError = rclpy_implementation.RCLError
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "mono8": 1}
log = logging.getLogger(__name__)


def ns_to_time(ns: int) -> Time:
    return Time(sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))


def time_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def seconds_to_duration(seconds: float) -> Duration:
    ns = round(seconds * NS_PER_S)
    return Duration(sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))


def duration_to_seconds(duration: Duration) -> float:
    return duration.sec + duration.nanosec / NS_PER_S


def chunk_to_trajectory(chunk: ActionChunk, frame_id: str = "") -> JointTrajectory:
    """Stamp = observation capture time, point k = action k at time_from_start k * dt."""
    if chunk.stamp_ns is None:
        raise ValueError("an action chunk must be stamped with its observation time before publishing")
    msg = JointTrajectory()
    msg.header.stamp = ns_to_time(chunk.stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = list(chunk.channel_names)
    actions = np.asarray(chunk.actions, dtype=np.float64)
    msg.points = [
        JointTrajectoryPoint(positions=row.tolist(), time_from_start=seconds_to_duration(k * chunk.dt))
        for k, row in enumerate(actions)
    ]
    return msg


def trajectory_to_chunk(msg: JointTrajectory, default_dt: float) -> ActionChunk:
    """Structural decoding only; the control core judges values, dt and timing.

    Raises ValueError when the message cannot be a chunk at all: no points, rows of
    different lengths, or points that are not evenly spaced in time. A single-point chunk
    takes ``default_dt`` since its spacing cannot be read from it.
    """
    if not msg.points:
        raise ValueError("chunk has no points")
    widths = {len(p.positions) for p in msg.points}
    if len(widths) != 1:
        raise ValueError(f"chunk points have different lengths {sorted(widths)}")
    actions = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), widths.pop())
    times = np.array([duration_to_seconds(p.time_from_start) for p in msg.points])
    if len(times) > 1:
        steps = np.diff(times)
        dt = float(steps[0])
        if not np.allclose(steps, dt, atol=1e-6):
            raise ValueError(f"chunk points are not evenly spaced in time (steps {steps.min():g}..{steps.max():g} s)")
        if abs(times[0]) > 1e-6:
            raise ValueError(f"first point must be at time_from_start 0, got {times[0]:g} s")
    else:
        dt = default_dt
    return ActionChunk(actions, tuple(msg.joint_names), dt, time_to_ns(msg.header.stamp))


def image_to_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "") -> Image:
    if encoding not in BYTES_PER_PIXEL:
        raise ValueError(f"unsupported encoding {encoding!r}; use one of {sorted(BYTES_PER_PIXEL)}")
    channels = BYTES_PER_PIXEL[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if image.dtype != np.uint8 or image.ndim != expected_ndim or (channels == 3 and image.shape[2] != 3):
        raise ValueError(f"{encoding} needs a uint8 array of {'HxW' if channels == 1 else 'HxWx3'}, got {image.dtype} {image.shape}")
    msg = Image()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """A read-only HxWxC (or HxW for mono8) view on the message buffer, honouring ``step``."""
    if msg.encoding not in BYTES_PER_PIXEL:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; expected one of {sorted(BYTES_PER_PIXEL)}")
    channels = BYTES_PER_PIXEL[msg.encoding]
    row_bytes = msg.width * channels
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(
            f"image buffer too small: {len(msg.data)} bytes for {msg.height} rows of step {msg.step} "
            f"({msg.width}x{msg.height} {msg.encoding})"
        )
    flat = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = flat.reshape(msg.height, msg.step)[:, :row_bytes]
    return rows.reshape(msg.height, msg.width) if channels == 1 else rows.reshape(msg.height, msg.width, channels)


def joint_positions(msg: JointState) -> dict[str, float]:
    return dict(zip(msg.name, msg.position))


def string_list_parameter(node: Node, name: str) -> list[str]:
    """Declare a string-array parameter whose empty default still types as a list."""
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType

    descriptor = ParameterDescriptor(type=ParameterType.PARAMETER_STRING_ARRAY, dynamic_typing=True)
    value = node.declare_parameter(name, [""], descriptor).value
    return [v for v in (value or []) if v]


def declare_configs(node: Node, default_embodiment: str) -> tuple[EmbodimentConfig, RuntimeConfig]:
    """Read the ``config``/``runtime_config`` parameters and their ``*_overrides`` (KEY=VALUE lists).

    A bad file raises ConfigError; :func:`run_node` turns that into a logged error and exit 2.
    """
    embodiment_source = node.declare_parameter("config", default_embodiment).value
    runtime_source = node.declare_parameter("runtime_config", "").value
    embodiment_overrides = dict(parse_override(t) for t in string_list_parameter(node, "config_overrides"))
    runtime_overrides = dict(parse_override(t) for t in string_list_parameter(node, "runtime_overrides"))
    embodiment = load_embodiment(embodiment_source, embodiment_overrides)
    runtime = load_runtime(runtime_source or None, runtime_overrides)
    return embodiment, runtime


class YieldingMultiThreadedExecutor(MultiThreadedExecutor):
    """MultiThreadedExecutor that releases the GIL after handing each callback to its pool.

    rclpy before 10.0.4 (ros2/rclpy#1452, fixed by #1547) re-yields callbacks that are
    queued but not yet started, so with subscriptions present its spin thread busy-loops,
    holding the GIL: measured here, 79% CPU and a 50 Hz timer firing at 15-20 Hz. Yielding
    after each hand-off lets the workers start: 9% CPU and the full 50 Hz.
    """

    def _spin_once_impl(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._spin_once_impl(*args, **kwargs)
        except RCLError:
            # SIGTERM shuts the context down between waits; the next wait set fails to build.
            if self._context.ok():
                raise
            raise ExternalShutdownException() from None
        os.sched_yield()  # releases the GIL


class Spinner(Protocol):
    def add_node(self, node: Node) -> bool | None: ...

    def spin(self) -> None: ...


class EventsSpinner:
    """rclpy's EventsExecutor (``rclpy.experimental``, rclpy 9 / Kilted on), spun with ``spin_once``.

    It waits and dispatches in C++, so between callbacks the GIL is free: a loop thread of
    the node's own then wakes on time (docs/benchmarks.md, controller loop). Its ``spin()``
    in rclpy 9.1.2 never fires timers (a 50 Hz timer: no call in 3 s, where ``spin_once``
    gives 150), hence the loop here. Callbacks run one at a time, on the spinning thread.
    """

    def __init__(self, context: rclpy.context.Context | None = None) -> None:
        from rclpy.experimental import EventsExecutor

        self.context = context or rclpy.get_default_context()
        self.executor = EventsExecutor(context=self.context)

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)

    def spin(self) -> None:
        while self.context.ok():
            self.executor.spin_once(timeout_sec=0.1)


def low_latency_spinner(threads: int, context: rclpy.context.Context | None = None) -> Spinner:
    """The EventsExecutor where rclpy has it; otherwise (Humble, Jazzy) the yielding multi-threaded one."""
    try:
        return EventsSpinner(context)
    except ImportError:
        return YieldingMultiThreadedExecutor(num_threads=threads, context=context)


class SecureStartError(QwenVlaError, RuntimeError):
    """Security was asked for but this node cannot have it: it must not start at all."""


def _create_node(factory: Callable[..., Node], kwargs: dict[str, Any]) -> Node:
    """The node, or SecureStartError when security is on and DDS refused it (never a node running open)."""
    try:
        return factory(**kwargs)
    except RCLError as exc:
        if not security_requested():
            raise
        hint = ""
        if "security libraries" in str(exc):
            hint = (" The Fast DDS in use has no DDS-Security plugins (the PyPI wheels are built without them): "
                    "run on a ROS 2 distribution's rmw_fastrtps_cpp, or start without security.")
        raise SecureStartError(
            f"DDS security was asked for (ROS_SECURITY_ENABLE=true) but this node cannot run with it, so it does "
            f"not start: {str(exc).strip()}.{hint} See docs/security.md."
        ) from exc


def run_node(
    factory: Callable[..., Node],
    args: Sequence[str] | None = None,
    *,
    executor_factory: Callable[[], Spinner] = YieldingMultiThreadedExecutor,
    **kwargs: Any,
) -> int:
    """Init rclpy with the shipped DDS profile, spin a MultiThreadedExecutor, shut down cleanly.

    Nodes put their control loops in their own callback groups; the multi-threaded executor
    then keeps a slow callback (inference, disk) from delaying them; its thread count should
    cover every group that may be busy at once. Nodes that do their heavy work on threads of
    their own and receive camera frames (policy_node, camera_node) pass
    ``SingleThreadedExecutor``: rclpy's multi-threaded executor costs several times the CPU per
    message and drops frames under load (docs/benchmarks.md, camera latency).

    Security fails closed: when it is asked for and cannot hold (a strategy other than
    Enforce, no keystore, an RMW without DDS-Security), the node exits with code 2 and says
    why before it ever joins the graph.
    """
    apply_dds_profile()
    problem = rclpy_origin_problem(rclpy.__file__)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    insecure = security_problem()
    if insecure:
        print(f"error: DDS security was asked for but would not hold, so this node does not start: {insecure}",
              file=sys.stderr)
        return EXIT_BAD_CONFIG
    rclpy.init(args=list(args) if args is not None else None)
    node: Node | None = None
    try:
        node = _create_node(factory, kwargs)
        executor = executor_factory()
        executor.add_node(node)
        executor.spin()
    except (ConfigError, SecureStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT shut the context down while spin was taking a message (rclpy raises RuntimeError
        # or RCLError from take_message then): that is the requested shutdown, not a failure.
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
