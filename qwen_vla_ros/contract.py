"""The ROS graph contract, declared once: every topic and service, its type, QoS kind, and who uses it.

Nodes, bringup, the recorder's topic list, benchmarks, the security policy and the docs take
names from here; nothing else spells a topic. No ROS import: ``nodes/ros_contract.py`` turns
a :class:`QosKind` into an rclpy profile. Topics whose names come from configuration (cameras,
joint states, odometry, driver commands, Joy, leaders, the e-stop) are built from an
:class:`~qwen_vla_ros.config.embodiment.EmbodimentConfig` by :func:`graph_topics`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import (
    Camera,
    CameraSourceTopic,
    ForwardCommandOutput,
    InterbotixOutput,
    JointTrajectoryOutput,
    TwistOutput,
)
from qwen_vla_ros.config.sim import MujocoAlohaSim
from qwen_vla_ros.config.spaces import OdometrySource


class QosKind(str, Enum):
    """How a topic is delivered; ``nodes.ros_contract.PUBLISHER_QOS`` and ``SUBSCRIPTION_QOS`` map each
    kind to the rclpy profiles of its two ends."""

    RELIABLE = "reliable"  # reliable, volatile, depth 10: chunks, commands, diagnostics
    LATCHED = "latched"  # reliable, transient local, depth 1: state late joiners must see (mode, e-stop)
    SENSOR = "sensor"  # read best effort, so reliable and best-effort drivers both match: joint states, odometry, Joy
    CAMERA = "camera"  # as sensor, with camera depths: images and camera info
    ANY = "any"  # a subscription that must match every publisher whatever its QoS (for the e-stop)


class NodeRole(str, Enum):
    """Who publishes or subscribes: the runtime's nodes, plus the outside parties of the graph."""

    CONTROLLER = "qwen_vla_controller"
    POLICY = "policy_node"
    SIM = "sim_node"
    RECORDER = "trial_recorder"
    CAMERA = "camera_node"
    JOYSTICK = "joystick_node"
    DRIVER = "driver"  # Interbotix xs_sdk, base driver, camera driver, or the sim in their place
    # A person or tool that commands: ros2 topic pub, an operator UI, and the demo's monitor when it
    # resets the sim and starts or stops trials (services only an operator may call).
    OPERATOR = "operator"
    MONITOR = "monitor"  # read only: dashboards, the demo's monitor as it watches, Foxglove
    EXPERT = "expert_node"  # the scripted demonstrator, in the policy's place while collecting


@dataclass(frozen=True)
class Topic:
    """One topic: ``msg_type`` is ``pkg/msg/Type``.

    ``config_field`` is empty for the runtime's fixed topics and names the configuration field
    a topic's name comes from otherwise (``arms[].joint_state_topic``), so the docs can
    describe every embodiment at once.
    """

    name: str
    msg_type: str
    qos: QosKind
    publishers: frozenset[NodeRole]
    subscribers: frozenset[NodeRole]
    summary: str
    config_field: str = field(default="", compare=False)


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


C, P, S, R, CAM, J, D, OP, M, E = (
    NodeRole.CONTROLLER, NodeRole.POLICY, NodeRole.SIM, NodeRole.RECORDER, NodeRole.CAMERA,
    NodeRole.JOYSTICK, NodeRole.DRIVER, NodeRole.OPERATOR, NodeRole.MONITOR, NodeRole.EXPERT,
)

ACTION_CHUNK = Topic(
    "/qwen_vla/action_chunk", "trajectory_msgs/msg/JointTrajectory", QosKind.RELIABLE, _roles(P, E), _roles(C, R, M),
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
    "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", QosKind.RELIABLE, _roles(C, P, S, CAM), _roles(R, M),
    "every node's diagnostics",
)
CONTROLLER_STATUS = "qwen_vla/controller"
"""The name of the controller's DiagnosticStatus on CONTROLLER_STATE and DIAGNOSTICS, whose values
(chunks accepted, rejected by reason, mode) the bringup commands read."""
HEARTBEAT = Topic(
    "/qwen_vla/heartbeat", "sensor_msgs/msg/TimeReference", QosKind.RELIABLE, _roles(C, P, CAM), _roles(C, P, CAM),
    "liveness and clock offset between hosts: header.stamp = sender's ROS time, source = host/node",
)
POLICY_HEARTBEAT = Topic(
    "/qwen_vla/policy/heartbeat", "std_msgs/msg/Header", QosKind.SENSOR, _roles(P, E), _roles(C),
    "policy liveness, from a thread of its own every safety.policy_timeout_s / 5: stamp = sender's ROS time, "
    "frame_id = host/node; the controller holds when it stops (docs/safety.md)",
)
MODE = Topic(
    "/qwen_vla/mode", "std_msgs/msg/String", QosKind.LATCHED, _roles(C), _roles(P, R, M),
    "arbitration mode at each change: policy | teleop | hold; the policy infers only in policy, the recorder counts "
    "takeovers",
)
INSTRUCTION = Topic(
    "/qwen_vla/instruction", "std_msgs/msg/String", QosKind.RELIABLE, _roles(OP), _roles(P, R),
    "the task instruction the policy follows",
)
SIM_SUCCESS = Topic(
    "/qwen_vla/sim/success", "std_msgs/msg/Bool", QosKind.LATCHED, _roles(S), _roles(R, M),
    "the simulated task's success, every control period",
)
NEXT_CONDITION = Topic(
    "/qwen_vla/trial/next_condition", "std_msgs/msg/String", QosKind.LATCHED, _roles(R), _roles(OP),
    "JSON {protocol, condition, instruction, slot, total, completed, remaining, done, source} of the protocol's next "
    "condition, for the operator",
)
CLOCK = Topic(
    "/clock", "rosgraph_msgs/msg/Clock", QosKind.RELIABLE, _roles(S), _roles(C, P, R),
    "simulated time, from sim_node with realtime:=false (use_sim_time)",
)
SIM_RANDOMIZATION = Topic(
    "/qwen_vla/sim/randomization", "std_msgs/msg/String", QosKind.LATCHED, _roles(OP), _roles(S),
    "JSON of sim.randomization fields that replace the config's from the next reset on ({} restores it)",
)
EXPERT_COMMAND = Topic(
    "/qwen_vla/expert/command", "std_msgs/msg/String", QosKind.RELIABLE, _roles(OP), _roles(E),
    'JSON for the scripted expert: {"id": n, "command": "home"} or {"id": n, "command": "play", "object_position": [x, y, z]}',
)
EXPERT_STATUS = Topic(
    "/qwen_vla/expert/status", "std_msgs/msg/String", QosKind.LATCHED, _roles(E), _roles(OP, R),
    'JSON of the expert\'s latest command: {"id": n, "command": ..., "state": "running" | "done" | "error", "detail": ...}',
)
START_POSE = Topic(
    "/qwen_vla/controller/start_pose", "std_msgs/msg/String", QosKind.LATCHED, _roles(C), _roles(R, M),
    'JSON of the last move to the start pose: {"pose": {arm: joints}, "arrived": bool, "interrupted": bool, '
    '"error_rad": {arm: largest joint error measured}}; the policy has control again only after arrived: true; the '
    'next trial record keeps it',
)
TRIAL_EVENT = Topic(
    "/qwen_vla/trial/event", "std_msgs/msg/String", QosKind.LATCHED, _roles(R), _roles(C, M),
    'JSON {"trial": id, "change": "started" | "ended", "outcome": null | "success" | "failure" | "aborted"} when the '
    'recorder starts or ends a trial, whoever asked; an end puts a policy in control on hold, the next start resumes '
    'it; latched, so a controller that starts or is discovered after the announcement still holds (docs/operation.md, '
    '"Trials")',
)

RUNTIME_TOPICS: tuple[Topic, ...] = (
    ACTION_CHUNK, COMMITTED, COMMAND, CONTROLLER_STATE, DIAGNOSTICS, HEARTBEAT, POLICY_HEARTBEAT, MODE, INSTRUCTION,
    SIM_SUCCESS, NEXT_CONDITION, CLOCK, SIM_RANDOMIZATION, EXPERT_COMMAND, EXPERT_STATUS, START_POSE, TRIAL_EVENT,
)

ESTOP_RESET = Service(
    "/qwen_vla/estop/reset", "std_srvs/srv/Trigger", _roles(C), _roles(OP),
    "clears a latched e-stop (and publishes false on the e-stop topic); motion resumes with a ramp from the measured state",
)
TRIAL_START = Service("/qwen_vla/trial/start", "std_srvs/srv/Trigger", _roles(R), _roles(C, OP), "starts a trial")
TRIAL_SUCCESS = Service(
    "/qwen_vla/trial/stop_success", "std_srvs/srv/Trigger", _roles(R), _roles(C, OP), "ends the trial as a success",
)
TRIAL_FAILURE = Service(
    "/qwen_vla/trial/stop_failure", "std_srvs/srv/Trigger", _roles(R), _roles(C, OP), "ends the trial as a failure",
)
TRIAL_ABORT = Service(
    "/qwen_vla/trial/abort", "std_srvs/srv/Trigger", _roles(R), _roles(C, OP), "aborts the trial (not counted)",
)
SIM_RESET = Service(
    "/qwen_vla/sim/reset", "std_srvs/srv/Trigger", _roles(S), _roles(OP),
    "resets the sim with task randomisation; message = JSON of the conditions drawn (seed, reset, object_pose "
    "[x, y, z, yaw], optional light_scale, table_rgb)",
)
MOVE_TO_START = Service(
    "/qwen_vla/controller/move_to_start", "std_srvs/srv/Trigger", _roles(C), _roles(OP),
    "starts moving every arm to the config's start_pose within its limits (answered at once); the policy gets "
    "control back only when joint states confirm the arrival, reported on /qwen_vla/controller/start_pose",
)

SERVICES: tuple[Service, ...] = (ESTOP_RESET, TRIAL_START, TRIAL_SUCCESS, TRIAL_FAILURE, TRIAL_ABORT, SIM_RESET,
                                 MOVE_TO_START)

# The Interbotix xs_sdk driver's services under each arm's namespace, called by the controller's preflight
# (docs/operation.md, "Interbotix preflight"); ``{namespace}`` is ``arms[].namespace``.
DRIVER_SERVICES: tuple[Service, ...] = (
    Service("/{namespace}/get_robot_info", "interbotix_xs_msgs/srv/RobotInfo", _roles(D), _roles(C),
            "a joint group's or joint's mode, joint names, limits, sleep positions and joint-state indices"),
    Service("/{namespace}/set_operating_modes", "interbotix_xs_msgs/srv/OperatingModes", _roles(D), _roles(C),
            "sets the operating mode and profile (only with configure_robot:=true)"),
    Service("/{namespace}/set_motor_registers", "interbotix_xs_msgs/srv/RegisterValues", _roles(D), _roles(C),
            "writes a motor register: the gripper's current limit (only with configure_robot:=true)"),
)


def driver_services(namespace: str) -> dict[str, Service]:
    """One arm's :data:`DRIVER_SERVICES`, by the service's own name (``get_robot_info``)."""
    services = {}
    for template in DRIVER_SERVICES:
        name = template.name.format(namespace=namespace)
        services[name.rsplit("/", 1)[1]] = Service(name, template.srv_type, template.servers, template.clients,
                                                   template.summary)
    return services


def config_services(config: EmbodimentConfig) -> tuple[Service, ...]:
    """The driver services the controller calls for ``config``: those of every arm of an ``interbotix`` output."""
    return tuple(service for output in config.outputs if isinstance(output, InterbotixOutput)
                 for arm in output.arms for service in driver_services(config.arm(arm).namespace).values())


# The trial recorder's services, by the teleop button that calls them.
TRIAL_SERVICES: dict[str, Service] = {
    "trial_start": TRIAL_START,
    "trial_success": TRIAL_SUCCESS,
    "trial_failure": TRIAL_FAILURE,
    "trial_abort": TRIAL_ABORT,
}

# joystick_node publishes this relative name, as joy_node does; bringup remaps it onto teleop.joy_topic.
JOYSTICK_OUTPUT = "joy"
JOY_QOS = QosKind.SENSOR

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
JOINT_STATE = "sensor_msgs/msg/JointState"
ODOMETRY = "nav_msgs/msg/Odometry"
JOY = "sensor_msgs/msg/Joy"
BOOL = "std_msgs/msg/Bool"
DRIVER_COMMAND_QOS = QosKind.RELIABLE  # what the command adapters publish with, whatever the driver
OUTPUT_TYPES = {
    "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "forward_command": "std_msgs/msg/Float64MultiArray",
    "twist": "geometry_msgs/msg/Twist",
    "interbotix_group": "interbotix_xs_msgs/msg/JointGroupCommand",
    "interbotix_single": "interbotix_xs_msgs/msg/JointSingleCommand",
}


def info_topic(camera: Camera) -> str:
    """``info_topic``, or ``camera_info`` beside the image topic (the realsense2_camera layout)."""
    return camera.info_topic or camera.topic.rsplit("/", 1)[0] + "/camera_info"


def _sim_cameras(config: EmbodimentConfig) -> set[str]:
    """Cameras sim_node renders: MuJoCo renders the mapped ones, the kinematic sims every camera."""
    if config.sim is None:
        return set()
    if isinstance(config.sim, MujocoAlohaSim):
        return set(config.sim.camera_map)
    return {camera.name for camera in config.cameras}


def _camera_topics(config: EmbodimentConfig) -> list[Topic]:
    sim_cameras = _sim_cameras(config)
    topics = []
    for camera in config.cameras:
        # A 'topic' source is a camera driver's; camera_node serves every other source.
        served_by = D if isinstance(camera.source, CameraSourceTopic) else CAM
        image_publishers = _roles(served_by, *((S,) if camera.name in sim_cameras else ()))
        topics.append(Topic(camera.topic, IMAGE, QosKind.CAMERA, image_publishers, _roles(P, R),
                            "a camera's frames: stamp = capture time", "cameras[].topic"))
        topics.append(Topic(info_topic(camera), CAMERA_INFO, QosKind.CAMERA, _roles(served_by), _roles(M),
                            "a camera's size and intrinsics (K all zero when uncalibrated)",
                            "cameras[].info_topic"))
    return topics


def _state_readings(config: EmbodimentConfig) -> tuple[set[str], bool]:
    """(arms, base) the policy's state vector reads, hence what policy_node subscribes to."""
    sources = [channel.source for channel in config.state.channels]
    arms = {s.arm for s in sources if not isinstance(s, OdometrySource)}
    return arms, any(isinstance(s, OdometrySource) for s in sources)


def _feedback_topics(config: EmbodimentConfig) -> list[Topic]:
    simulated = (S,) if config.sim is not None else ()
    state_arms, state_base = _state_readings(config)
    topics = [
        Topic(arm.joint_state_topic, JOINT_STATE, QosKind.SENSOR, _roles(D, *simulated),
              _roles(C, R, M, *((P,) if arm.name in state_arms else ())),
              "an arm's joint states (Interbotix layout: finger positions in m)", "arms[].joint_state_topic")
        for arm in config.arms
    ]
    if config.base is not None:
        topics.append(Topic(config.base.odom_topic, ODOMETRY, QosKind.SENSOR, _roles(D, *simulated),
                            _roles(C, R, *((P,) if state_base else ())), "the base's odometry", "base.odom_topic"))
    return topics


def _output_topics(config: EmbodimentConfig) -> list[Topic]:
    """What the controller sends the drivers, in the drivers' own messages (one adapter per ``outputs`` entry)."""
    receivers = _roles(D, R, *((S,) if config.sim is not None else ()))

    def command(name: str, kind: str, summary: str, config_field: str, senders: frozenset[NodeRole] = _roles(C)) -> Topic:
        return Topic(name, OUTPUT_TYPES[kind], DRIVER_COMMAND_QOS, senders, receivers, summary, config_field)

    topics = []
    for output in config.outputs:
        if isinstance(output, TwistOutput):
            topics.append(command(output.topic, "twist", "the base's (v, ω): linear.x, angular.z", "outputs[twist].topic"))
            continue
        for arm in (config.arm(name) for name in output.arms):
            if isinstance(output, InterbotixOutput):
                topics.append(command(output.group_topic.format(namespace=arm.namespace), "interbotix_group",
                                      "an arm's 6 joints (rad), driver order", "outputs[interbotix].group_topic"))
                topics.append(command(output.single_topic.format(namespace=arm.namespace), "interbotix_single",
                                      "an arm's gripper motor angle (rad)", "outputs[interbotix].single_topic",
                                      _roles(C) if arm.gripper is not None else _roles()))
            elif isinstance(output, JointTrajectoryOutput):
                topics.append(command(output.topic.format(namespace=arm.namespace), "joint_trajectory",
                                      "an arm's joints then gripper (rad), one point reached in one control period",
                                      "outputs[joint_trajectory].topic"))
            elif isinstance(output, ForwardCommandOutput):
                topics.append(command(output.topic.format(namespace=arm.namespace), "forward_command",
                                      "an arm's 6 joints then gripper motor angle (rad)", "outputs[forward_command].topic"))
    return topics


def _teleop_topics(config: EmbodimentConfig) -> list[Topic]:
    topics = [
        Topic(config.teleop.joy_topic, JOY, JOY_QOS, _roles(J), _roles(C, R),
              "gamepad or pedal: joystick_node, or joy_node in its role (and SROS2 enclave)", "teleop.joy_topic"),
        Topic(config.safety.estop_topic, BOOL, QosKind.ANY, _roles(C, OP), _roles(C, R),
              "true latches the e-stop; the controller publishes true from its button, false at a reset",
              "safety.estop_topic"),
    ]
    leader = config.teleop.leader_follow
    if leader.enabled:
        topics += [Topic(topic, JOINT_STATE, QosKind.SENSOR, _roles(D), _roles(C, R),
                         "a leader arm's joint states, followed by its follower arm", "teleop.leader_follow.topics")
                   for arm, topic in leader.topics.items()]
    return topics


def config_topics(config: EmbodimentConfig) -> tuple[Topic, ...]:
    """The topics whose names come from ``config``: cameras, feedback, driver commands, teleop, e-stop."""
    return (*_camera_topics(config), *_feedback_topics(config), *_output_topics(config), *_teleop_topics(config))


def graph_topics(config: EmbodimentConfig) -> tuple[Topic, ...]:
    """Every topic of the graph ``config`` brings up: the runtime's fixed topics, then the config's."""
    return RUNTIME_TOPICS + config_topics(config)


@dataclass(frozen=True)
class RoleView:
    """What one node publishes, subscribes to, serves and calls."""

    publishes: tuple[Topic, ...]
    subscribes: tuple[Topic, ...]
    serves: tuple[Service, ...]
    calls: tuple[Service, ...]


def role_view(role: NodeRole, config: EmbodimentConfig, *, sim_time: bool = False) -> RoleView:
    """``role``'s share of the graph. ``/clock`` belongs to it only with ``sim_time`` (sim_node
    with ``realtime:=false`` publishes it; nodes with ``use_sim_time`` subscribe to it)."""
    topics = [t for t in graph_topics(config) if sim_time or t is not CLOCK]
    return RoleView(
        tuple(t for t in topics if role in t.publishers),
        tuple(t for t in topics if role in t.subscribers),
        tuple(s for s in SERVICES if role in s.servers),
        tuple(s for s in SERVICES if role in s.clients),
    )

