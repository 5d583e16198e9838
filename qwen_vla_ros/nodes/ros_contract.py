"""The graph contract (:mod:`qwen_vla_ros.contract`) in rclpy terms: QoS profiles, endpoints, codecs.

One definition of each QoS kind's profiles, helpers that create a node's publishers,
subscriptions, services and clients straight from contract entries (name, type and QoS come
from there), and every message codec that crosses the graph: the action chunk, the
controller's committed actions, camera images and diagnostics. Images are filled from bytes
(``ndarray.tobytes()``, 0.2 ms for 640x480x3) and read with ``np.frombuffer`` (no copy);
assigning an ndarray to ``msg.data`` costs ~54 ms per frame.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import CallbackGroup
from rclpy.client import Client
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.service import Service as RclpyService
from rclpy.subscription import Subscription
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.contract import QosKind, Service, Topic
from qwen_vla_ros.embodiments.base import yaw_from_quaternion
from qwen_vla_ros.errors import MalformedMessageError
from qwen_vla_ros.health import Level
from qwen_vla_ros.nodes.common import duration_to_seconds, ns_to_time, seconds_to_duration, time_to_ns

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "mono8": 1}
FRAME_ID_ALLOWANCE = 256  # bytes of header.frame_id a chunk message may carry

_RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# What publishers offer: reliable, so a reliable reader (a recorder, ros2 topic echo) matches too.
PUBLISHER_QOS: dict[QosKind, QoSProfile] = {
    QosKind.RELIABLE: _RELIABLE,
    QosKind.LATCHED: _LATCHED,
    QosKind.SENSOR: _RELIABLE,  # as the Interbotix driver and joy_node publish
    # Reliable, newest two: realsense2_camera's default, so recorders and best-effort readers both match.
    QosKind.CAMERA: QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE),
    QosKind.ANY: _LATCHED,
}
# What subscriptions ask: best effort for sensors and cameras, which matches reliable and
# best-effort publishers alike (a retransmitted frame or joint state would be late anyway).
SUBSCRIPTION_QOS: dict[QosKind, QoSProfile] = {
    QosKind.RELIABLE: _RELIABLE,
    QosKind.LATCHED: _LATCHED,
    QosKind.SENSOR: qos_profile_sensor_data,
    # A few frames deep, so a busy executor does not lose frames the observation sync pairs.
    QosKind.CAMERA: QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT),
}
# QosKind.ANY is subscribed several times, and the union matches every publisher: reliable + transient
# local (a latched message published before the subscriber started), reliable + volatile (every
# reliable publisher, delivered reliably) and best effort + volatile (matches any publisher at all).
ANY_SUBSCRIPTION_QOS: tuple[QoSProfile, ...] = (
    _LATCHED,
    _RELIABLE,
    QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE),
)


def message_class(msg_type: str) -> type:
    """The Python class of ``pkg/msg/Type``; ImportError naming the type when it is not installed."""
    package, _, name = msg_type.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"message type {msg_type} is not installed ({exc})") from exc


def _service_class(srv_type: str) -> type:
    package, _, name = srv_type.split("/")
    return getattr(importlib.import_module(f"{package}.srv"), name)


def create_publisher(node: Node, topic: Topic, callback_group: CallbackGroup | None = None) -> Publisher:
    return node.create_publisher(message_class(topic.msg_type), topic.name, PUBLISHER_QOS[topic.qos],
                                 callback_group=callback_group)


def create_subscription(node: Node, topic: Topic, callback: Callable[[Any], None],
                        callback_group: CallbackGroup | None = None, depth: int | None = None,
                        raw: bool = False) -> Subscription:
    """``depth`` deepens the kind's queue for a reader that must not drop messages (a monitor counting them);
    ``raw`` hands the callback the serialized bytes, to be judged before anything decodes them. A topic of
    kind ``ANY`` takes :func:`create_subscriptions_matching_any`."""
    if topic.qos is QosKind.ANY:
        raise ValueError(f"{topic.name} must match any publisher: subscribe it with create_subscriptions_matching_any")
    qos = SUBSCRIPTION_QOS[topic.qos]
    if depth is not None:
        qos = QoSProfile(depth=depth, reliability=qos.reliability, durability=qos.durability)
    return node.create_subscription(message_class(topic.msg_type), topic.name, callback, qos, callback_group=callback_group,
                                    raw=raw)


def create_subscriptions_matching_any(node: Node, topic: Topic, callback: Callable[[Any], None],
                                      callback_group: CallbackGroup | None = None,
                                      event_callbacks: SubscriptionEventCallbacks | None = None) -> list[Subscription]:
    """One subscription per :data:`ANY_SUBSCRIPTION_QOS` profile, all to ``callback`` (which must be idempotent:
    a reliable publisher's message arrives more than once)."""
    return [node.create_subscription(message_class(topic.msg_type), topic.name, callback, qos,
                                     callback_group=callback_group, event_callbacks=event_callbacks)
            for qos in ANY_SUBSCRIPTION_QOS]


def create_service(node: Node, service: Service, handler: Callable[[Any, Any], Any],
                   callback_group: CallbackGroup | None = None) -> RclpyService:
    return node.create_service(_service_class(service.srv_type), service.name, handler, callback_group=callback_group)


def create_client(node: Node, service: Service, callback_group: CallbackGroup | None = None) -> Client:
    return node.create_client(_service_class(service.srv_type), service.name, callback_group=callback_group)


# -- action chunk (contract.ACTION_CHUNK) ------------------------------------------------

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

    Raises MalformedMessageError when the message cannot be a chunk at all: no points, rows of
    different lengths, or points that are not evenly spaced in time. A single-point chunk
    takes ``default_dt`` since its spacing cannot be read from it.
    """
    if not msg.points:
        raise MalformedMessageError("chunk has no points")
    widths = {len(p.positions) for p in msg.points}
    if len(widths) != 1:
        raise MalformedMessageError(f"chunk points have different lengths {sorted(widths)}")
    actions = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), widths.pop())
    times = np.array([duration_to_seconds(p.time_from_start) for p in msg.points])
    if len(times) > 1:
        steps = np.diff(times)
        dt = float(steps[0])
        if not np.allclose(steps, dt, atol=1e-6):
            raise MalformedMessageError(f"chunk points are not evenly spaced in time (steps {steps.min():g}..{steps.max():g} s)")
        if abs(times[0]) > 1e-6:
            raise MalformedMessageError(f"first point must be at time_from_start 0, got {times[0]:g} s")
    else:
        dt = default_dt
    return ActionChunk(actions, tuple(msg.joint_names), dt, time_to_ns(msg.header.stamp))


def chunk_message_limit(channel_names: Sequence[str], max_actions: int) -> int:
    """The most bytes a serialized chunk message may have: a chunk of ``max_actions`` points
    with every per-point field filled for every channel, plus room for a frame id. Anything
    larger cannot be a chunk the controller would accept, so it is refused before decoding."""
    width = len(channel_names)
    point = JointTrajectoryPoint(positions=[0.0] * width, velocities=[0.0] * width, accelerations=[0.0] * width,
                                 effort=[0.0] * width)
    largest = JointTrajectory(joint_names=list(channel_names), points=[point] * max_actions)
    largest.header.frame_id = "f" * FRAME_ID_ALLOWANCE
    return len(serialize_message(largest))


def decode_chunk_message(data: bytes, default_dt: float) -> ActionChunk:
    """A serialized ``JointTrajectory`` -> chunk; MalformedMessageError when it is not one."""
    try:
        message = deserialize_message(data, JointTrajectory)
    except RuntimeError as exc:  # rclpy's RMWError (a RuntimeError) for bytes that are not CDR
        raise MalformedMessageError(f"not a serialized JointTrajectory ({len(data)} bytes): {exc}") from exc
    return trajectory_to_chunk(message, default_dt)


# -- committed actions (contract.COMMITTED) ---------------------------------------------
# Time convention: header.stamp is the controller's time when it sends the message, and
# point k is the command due at stamp + (k + 1) * control period: row 0 is the next period's
# command, since the command due at the stamp has already gone out.

def committed_to_trajectory(stamp_ns: int, names: Sequence[str], rows: np.ndarray, period_s: float) -> JointTrajectory:
    """The controller's next ``len(rows)`` commands (action channels, robot units) from ``stamp_ns`` on."""
    message = JointTrajectory(joint_names=list(names))
    message.header.stamp = ns_to_time(stamp_ns)
    message.points = [
        JointTrajectoryPoint(positions=row.tolist(), time_from_start=seconds_to_duration((k + 1) * period_s))
        for k, row in enumerate(rows)
    ]
    return message


def trajectory_to_committed(msg: JointTrajectory) -> tuple[int, list[str], list[float], list[Sequence[float]]]:
    """(stamp_ns, channel names, offsets from the stamp in s, rows): ``CommittedHistory.add``'s arguments,
    which judges them."""
    return (time_to_ns(msg.header.stamp), list(msg.joint_names),
            [duration_to_seconds(p.time_from_start) for p in msg.points], [p.positions for p in msg.points])


# -- images -----------------------------------------------------------------------------------

def image_to_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "") -> Image:
    if encoding not in BYTES_PER_PIXEL:
        raise ValueError(f"unsupported encoding {encoding!r}; use one of {sorted(BYTES_PER_PIXEL)}")
    channels = BYTES_PER_PIXEL[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if image.dtype != np.uint8 or image.ndim != expected_ndim or (channels == 3 and image.shape[2] != 3):
        shape = "HxW" if channels == 1 else "HxWx3"
        raise ValueError(f"{encoding} needs a uint8 array of {shape}, got {image.dtype} {image.shape}")
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
        raise MalformedMessageError(f"unsupported image encoding {msg.encoding!r}; expected one of {sorted(BYTES_PER_PIXEL)}")
    channels = BYTES_PER_PIXEL[msg.encoding]
    row_bytes = msg.width * channels
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise MalformedMessageError(
            f"image buffer too small: {len(msg.data)} bytes for {msg.height} rows of step {msg.step} "
            f"({msg.width}x{msg.height} {msg.encoding})"
        )
    flat = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = flat.reshape(msg.height, msg.step)[:, :row_bytes]
    return rows.reshape(msg.height, msg.width) if channels == 1 else rows.reshape(msg.height, msg.width, channels)


# -- diagnostics (contract.DIAGNOSTICS and contract.CONTROLLER_STATE) -----------------------

def diagnostic_status(name: str, message: str, values: Mapping[str, object], level: Level = Level.OK,
                      hardware_id: str = "") -> DiagnosticStatus:
    """One status; each value goes out as ``str(value)``."""
    return DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])


def diagnostic_array(statuses: Sequence[DiagnosticStatus], stamp_ns: int) -> DiagnosticArray:
    array = DiagnosticArray(status=list(statuses))
    array.header.stamp = ns_to_time(stamp_ns)
    return array


# -- odometry (the base's, on ``base.odom_topic``) ---------------------------------------------

def odometry_to_msg(pose: tuple[float, float, float], twist: tuple[float, float], stamp_ns: int, frame_id: str,
                    child_frame_id: str) -> Odometry:
    """A planar pose (x, y, yaw) and twist (forward speed, turn rate) as nav_msgs/Odometry."""
    msg = Odometry()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = frame_id, child_frame_id
    (x, y, yaw), (linear, angular) = pose, twist
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    msg.twist.twist.linear.x, msg.twist.twist.angular.z = linear, angular
    return msg


def msg_to_odometry(msg: Odometry) -> tuple[tuple[float, float, float], tuple[float, float], int]:
    """(pose (x, y, yaw), twist (forward speed, turn rate), header stamp in ns: 0 where unset)."""
    pose, twist, q = msg.pose.pose, msg.twist.twist, msg.pose.pose.orientation
    return ((pose.position.x, pose.position.y, yaw_from_quaternion(q.x, q.y, q.z, q.w)),
            (twist.linear.x, twist.angular.z), time_to_ns(msg.header.stamp))
