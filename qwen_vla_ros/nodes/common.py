"""What every node shares: time conversions, config parameters, executors and the main loop.

The message codecs of the graph contract (chunks, committed actions, images, diagnostics)
live in :mod:`qwen_vla_ros.nodes.ros_contract`.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import rclpy
from builtin_interfaces.msg import Duration, Time
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from sensor_msgs.msg import JointState

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config import ConfigError, EmbodimentConfig, RuntimeConfig, load_embodiment, load_runtime
from qwen_vla_ros.config.loader import parse_override
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.ros_env import apply_dds_profile, rclpy_origin_problem, security_problem, security_requested

EXIT_BAD_CONFIG = 2
RCLError = rclpy_implementation.RCLError
LARGE_BUFFER_BYTES = 64 * 1024 * 1024  # heap kept warm for receiving oversized messages
SHUTDOWN_CHECK_S = 0.25  # longest a spinning node waits before it looks again whether it was shut down
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
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


def keep_large_buffers(warm_bytes: int = LARGE_BUFFER_BYTES) -> bool:
    """Let glibc keep large buffers on the heap, warmed, instead of mapping fresh pages for each.

    Receiving a message copies it a few times while rclpy holds the GIL; for a 15 MB one,
    fresh pages made that 0.2 to 0.45 s on the shared VM, against tens of ms for pages used
    before (docs/architecture.md, chunk intake). Raising the mmap and trim thresholds keeps
    freed large blocks for reuse, and touching ``warm_bytes`` once at start-up (on the thread
    that will receive) faults them in before any message needs them. False where the C
    library has no ``mallopt`` (not glibc): nothing changes there.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    for option, value in ((M_MMAP_THRESHOLD, warm_bytes), (M_TRIM_THRESHOLD, 2 * warm_bytes), (M_TOP_PAD, warm_bytes // 2)):
        if not mallopt(option, value):
            return False
    bytearray(warm_bytes)  # allocated zeroed (every page touched) and freed back onto the heap
    return True


def joint_positions(msg: JointState) -> dict[str, float]:
    return dict(zip(msg.name, msg.position, strict=False))


def call_trigger_logged(node: Node, client: Any, label: str, provider: str) -> None:
    """Call a Trigger service without waiting: the answer (or the failure) is logged when it comes,
    so a button never blocks the callback that pressed it."""
    from std_srvs.srv import Trigger

    if not client.service_is_ready():
        node.get_logger().warning(f"{label}: {client.srv_name} is not available (is {provider} running?)")
        return
    node.get_logger().info(f"{label}: calling {client.srv_name}")

    def answered(future: Any) -> None:
        response = future.result()
        if response is None:
            node.get_logger().warning(f"{client.srv_name} failed: {future.exception()}")
        elif response.success:
            node.get_logger().info(f"{client.srv_name}: {response.message}")
        else:
            node.get_logger().warning(f"{client.srv_name} refused: {response.message}")

    client.call_async(Trigger.Request()).add_done_callback(answered)


def string_list_parameter(node: Node, name: str) -> list[str]:
    """Declare a string-array parameter whose empty default still types as a list."""
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType

    descriptor = ParameterDescriptor(type=ParameterType.PARAMETER_STRING_ARRAY, dynamic_typing=True)
    value: list[str] | None = node.declare_parameter(name, [""], descriptor).value
    return [v for v in (value or []) if v]


def declare_configs(node: Node, default_embodiment: str) -> tuple[EmbodimentConfig, RuntimeConfig]:
    """Read the ``config``/``runtime_config`` parameters and their ``*_overrides`` (KEY=VALUE lists).

    A bad file raises ConfigError; :func:`run_node` turns that into a logged error and exit 2.
    """
    embodiment_source: str = node.declare_parameter("config", default_embodiment).value
    runtime_source: str = node.declare_parameter("runtime_config", "").value
    embodiment_overrides = dict(parse_override(t) for t in string_list_parameter(node, "config_overrides"))
    runtime_overrides = dict(parse_override(t) for t in string_list_parameter(node, "runtime_overrides"))
    embodiment = load_embodiment(embodiment_source, embodiment_overrides)
    runtime = load_runtime(runtime_source or None, runtime_overrides)
    return embodiment, runtime


class YieldingMultiThreadedExecutor(MultiThreadedExecutor):
    """MultiThreadedExecutor that releases the GIL after handing each callback to its pool,
    against rclpy's busy loop (ros2/rclpy#1452; docs/architecture.md, "Executors and timing")."""

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

    def spin_once(self, timeout_sec: float | None = None) -> None: ...


def spin_until_shutdown(spinner: Spinner, context: rclpy.context.Context) -> None:
    """Spin until ``context`` shuts down, looking at least every :data:`SHUTDOWN_CHECK_S`.

    rclpy's ``spin()`` waits without a timeout and relies on SIGTERM's wake-up reaching the wait,
    and that wake-up can be missed: a joystick node with no pad (nothing periodic in its wait set)
    was seen still waiting 10 s after SIGTERM had shut its context down (4 in 40 SIGTERMs at
    load 5). A bounded wait makes a missed wake-up cost at most this long.
    """
    while context.ok():
        spinner.spin_once(timeout_sec=SHUTDOWN_CHECK_S)


def low_latency_spinner(threads: int, context: rclpy.context.Context | None = None) -> Spinner:
    """rclpy's EventsExecutor where rclpy has it (``rclpy.experimental``, rclpy 9 / Kilted on);
    otherwise (Humble, Jazzy) the yielding multi-threaded one. Why the controllers use it:
    docs/architecture.md, "Executors and timing"."""
    try:
        from rclpy.experimental import EventsExecutor

        return EventsExecutor(context=context)
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
    """Init rclpy with the shipped DDS profile, spin ``executor_factory()``, shut down cleanly.

    Slow callbacks get their own callback groups, so the multi-threaded executor keeps them
    from delaying the others; which node spins which executor, and why: docs/architecture.md,
    "Executors and timing".

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
        spin_until_shutdown(executor, node.context)
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
