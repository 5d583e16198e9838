"""The ROS graph contract, declared once: every topic and service, its type, QoS kind, and who uses it.

Nodes, bringup, the recorder's topic list, benchmarks, the security policy and the docs take
names from here; nothing else spells a topic. No ROS import: ``nodes/ros_contract.py`` turns
a :class:`QosKind` into an rclpy profile. Topics whose names come from configuration (cameras,
joint states, odometry, driver commands, Joy, leaders, the e-stop) are built from an
:class:`~qwen_vla_ros.config.embodiment.EmbodimentConfig` by :func:`graph_topics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class QosKind(str, Enum):
    """How a topic is delivered; ``nodes.ros_contract.qos_profile`` maps each kind to rclpy."""

    RELIABLE = "reliable"  # reliable, volatile, depth 10: chunks, commands, diagnostics
    LATCHED = "latched"  # reliable, transient local, depth 1: state late joiners must see (mode)
    SENSOR = "sensor"  # best effort, volatile, small depth: joint states, odometry, Joy
    CAMERA = "camera"  # images: see nodes.ros_contract for the depth and reliability
    ANY = "any"  # a subscription that must match every publisher whatever its QoS (the e-stop)


class NodeRole(str, Enum):
    """Who publishes or subscribes: the runtime's nodes, plus the outside parties of the graph."""

    CONTROLLER = "qwen_vla_controller"
    POLICY = "policy_node"
    SIM = "sim_node"
    RECORDER = "trial_recorder"
    CAMERA = "camera_node"
    JOYSTICK = "joystick_node"
    DRIVER = "driver"  # Interbotix xs_sdk, base driver, camera driver, or the sim in their place
    OPERATOR = "operator"  # a person or tool: ros2 topic pub, an operator UI
    MONITOR = "monitor"  # dashboards, the demo's monitor, Foxglove


@dataclass(frozen=True)
class Topic:
    """One topic: ``msg_type`` is ``pkg/msg/Type``."""

    name: str
    msg_type: str
    qos: QosKind
    publishers: frozenset[NodeRole]
    subscribers: frozenset[NodeRole]
    summary: str


@dataclass(frozen=True)
class Service:
    """One service: ``srv_type`` is ``pkg/srv/Type``."""

    name: str
    srv_type: str
    servers: frozenset[NodeRole]
    clients: frozenset[NodeRole]
    summary: str


def _roles(*roles: NodeRole) -> frozenset[NodeRole]:
    return frozenset(roles)


C, P, S, R, CAM, J, D, O, M = (
    NodeRole.CONTROLLER, NodeRole.POLICY, NodeRole.SIM, NodeRole.RECORDER, NodeRole.CAMERA,
    NodeRole.JOYSTICK, NodeRole.DRIVER, NodeRole.OPERATOR, NodeRole.MONITOR,
)

ACTION_CHUNK = Topic(
    "/qwen_vla/action_chunk", "trajectory_msgs/msg/JointTrajectory", QosKind.RELIABLE, _roles(P), _roles(C, R, M),
    "action chunk: stamp = observation capture time, point k due at stamp + k*action_dt",
)
COMMITTED = Topic(
    "/qwen_vla/controller/committed", "trajectory_msgs/msg/JointTrajectory", QosKind.RELIABLE, _roles(C), _roles(P, R),
    "actions the controller will execute next, for real-time chunking: point k due at stamp + (k+1)*control period",
)
COMMAND = Topic(
    "/qwen_vla/controller/command", "sensor_msgs/msg/JointState", QosKind.RELIABLE, _roles(C), _roles(R, M),
    "the command sent to the robot this period, in command space",
)
CONTROLLER_STATE = Topic(
    "/qwen_vla/controller/state", "diagnostic_msgs/msg/DiagnosticArray", QosKind.RELIABLE, _roles(C), _roles(M),
    "the controller's diagnostics (also on /diagnostics)",
)
DIAGNOSTICS = Topic(
    "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", QosKind.RELIABLE, _roles(C, P, S, R, CAM), _roles(R, M),
    "every node's diagnostics",
)
HEARTBEAT = Topic(
    "/qwen_vla/heartbeat", "sensor_msgs/msg/TimeReference", QosKind.RELIABLE, _roles(C, P, S, R, CAM), _roles(C, P, S, R, CAM),
    "liveness and clock offset between hosts: header.stamp = sender's ROS time, source = host/node",
)
POLICY_HEARTBEAT = Topic(
    "/qwen_vla/policy/heartbeat", "std_msgs/msg/Header", QosKind.SENSOR, _roles(P), _roles(C),
    "policy liveness, from a thread of its own every safety.policy_timeout_s / 5: stamp = sender's ROS time, "
    "frame_id = host/node; the controller holds when it stops (docs/safety.md)",
)
MODE = Topic(
    "/qwen_vla/mode", "std_msgs/msg/String", QosKind.LATCHED, _roles(C), _roles(P, R, M),
    "arbitration mode at each change: policy | teleop | hold",
)
INSTRUCTION = Topic(
    "/qwen_vla/instruction", "std_msgs/msg/String", QosKind.RELIABLE, _roles(O), _roles(P, R),
    "the task instruction the policy follows",
)
SIM_SUCCESS = Topic(
    "/qwen_vla/sim/success", "std_msgs/msg/Bool", QosKind.LATCHED, _roles(S), _roles(R, M),
    "the simulated task's success, every control period",
)
NEXT_CONDITION = Topic(
    "/qwen_vla/trial/next_condition", "std_msgs/msg/String", QosKind.LATCHED, _roles(R), _roles(O),
    "JSON of the protocol's next condition for the operator",
)
CLOCK = Topic(
    "/clock", "rosgraph_msgs/msg/Clock", QosKind.RELIABLE, _roles(S), _roles(C, P, R),
    "simulated time, from sim_node with realtime:=false (use_sim_time)",
)

RUNTIME_TOPICS: tuple[Topic, ...] = (
    ACTION_CHUNK, COMMITTED, COMMAND, CONTROLLER_STATE, DIAGNOSTICS, HEARTBEAT, POLICY_HEARTBEAT, MODE, INSTRUCTION,
    SIM_SUCCESS, NEXT_CONDITION, CLOCK,
)

ESTOP_RESET = Service(
    "/qwen_vla/estop/reset", "std_srvs/srv/Trigger", _roles(C), _roles(O),
    "clears a latched e-stop; motion resumes with a ramp from the measured state",
)
TRIAL_START = Service("/qwen_vla/trial/start", "std_srvs/srv/Trigger", _roles(R), _roles(C, O), "starts a trial")
TRIAL_SUCCESS = Service(
    "/qwen_vla/trial/stop_success", "std_srvs/srv/Trigger", _roles(R), _roles(C, O), "ends the trial as a success",
)
TRIAL_FAILURE = Service(
    "/qwen_vla/trial/stop_failure", "std_srvs/srv/Trigger", _roles(R), _roles(C, O), "ends the trial as a failure",
)
TRIAL_ABORT = Service(
    "/qwen_vla/trial/abort", "std_srvs/srv/Trigger", _roles(R), _roles(C, O), "aborts the trial (not counted)",
)
SIM_RESET = Service(
    "/qwen_vla/sim/reset", "std_srvs/srv/Trigger", _roles(S), _roles(O, M),
    "resets the sim with task randomisation; message = JSON of the conditions drawn",
)

SERVICES: tuple[Service, ...] = (ESTOP_RESET, TRIAL_START, TRIAL_SUCCESS, TRIAL_FAILURE, TRIAL_ABORT, SIM_RESET)

# The trial recorder's services, by the teleop button that calls them.
TRIAL_SERVICES: dict[str, Service] = {
    "trial_start": TRIAL_START,
    "trial_success": TRIAL_SUCCESS,
    "trial_failure": TRIAL_FAILURE,
    "trial_abort": TRIAL_ABORT,
}
