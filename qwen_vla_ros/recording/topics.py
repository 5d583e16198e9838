"""Which topics a trial records, and with which QoS the recorder subscribes to them."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import ForwardCommandOutput, InterbotixOutput, JointTrajectoryOutput, TwistOutput

IMAGE = "sensor_msgs/msg/Image"
JOINT_STATE = "sensor_msgs/msg/JointState"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
STRING = "std_msgs/msg/String"
BOOL = "std_msgs/msg/Bool"

MODE_TOPIC = "/qwen_vla/mode"
INSTRUCTION_TOPIC = "/qwen_vla/instruction"
SIM_SUCCESS_TOPIC = "/qwen_vla/sim/success"
TRIAL_SERVICES = {  # the trial recorder's std_srvs/Trigger services, by the teleop button that calls them
    "trial_start": "/qwen_vla/trial/start",
    "trial_success": "/qwen_vla/trial/stop_success",
    "trial_failure": "/qwen_vla/trial/stop_failure",
    "trial_abort": "/qwen_vla/trial/abort",
}

RUNTIME_TOPICS: dict[str, str] = {
    "/qwen_vla/action_chunk": TRAJECTORY,
    "/qwen_vla/controller/command": JOINT_STATE,
    "/qwen_vla/controller/committed": TRAJECTORY,
    MODE_TOPIC: STRING,
    INSTRUCTION_TOPIC: STRING,
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    SIM_SUCCESS_TOPIC: BOOL,
}


def _output_topics(config: EmbodimentConfig) -> dict[str, str]:
    """What the controller sends the drivers, in the drivers' own messages."""
    topics: dict[str, str] = {}
    for output in config.outputs:
        if isinstance(output, TwistOutput):
            topics[output.topic] = "geometry_msgs/msg/Twist"
            continue
        for arm_name in output.arms:
            namespace = config.arm(arm_name).namespace
            if isinstance(output, InterbotixOutput):
                topics[output.group_topic.format(namespace=namespace)] = "interbotix_xs_msgs/msg/JointGroupCommand"
                topics[output.single_topic.format(namespace=namespace)] = "interbotix_xs_msgs/msg/JointSingleCommand"
            elif isinstance(output, JointTrajectoryOutput):
                topics[output.topic.format(namespace=namespace)] = TRAJECTORY
            elif isinstance(output, ForwardCommandOutput):
                topics[output.topic.format(namespace=namespace)] = "std_msgs/msg/Float64MultiArray"
    return topics


def default_topics(config: EmbodimentConfig) -> dict[str, str]:
    """topic -> message type: cameras, joint states, odometry, runtime topics, driver commands.

    Topics that never get a publisher (``/qwen_vla/sim/success`` on a real robot) are simply
    never subscribed.
    """
    topics = {camera.topic: IMAGE for camera in config.cameras}
    topics |= {arm.joint_state_topic: JOINT_STATE for arm in config.arms}
    if config.base is not None:
        topics[config.base.odom_topic] = "nav_msgs/msg/Odometry"
    topics |= RUNTIME_TOPICS
    topics[config.teleop.joy_topic] = "sensor_msgs/msg/Joy"
    if config.teleop.leader_follow.enabled:
        topics |= {topic: JOINT_STATE for topic in config.teleop.leader_follow.topics.values()}
    topics[config.safety.estop_topic] = BOOL
    topics |= _output_topics(config)
    return topics


def parse_topic_spec(spec: str) -> tuple[str, str]:
    """'/name' or '/name:pkg/msg/Type' -> (name, type or '' to take it from the graph)."""
    name, _, msgtype = spec.strip().partition(":")
    if not name.startswith("/"):
        raise ValueError(f"topic {name!r} must be absolute (start with '/')")
    if msgtype and len(msgtype.split("/")) != 3:
        raise ValueError(f"message type {msgtype!r} of {name} must look like pkg/msg/Type")
    return name, msgtype


def recorded_topics(
    config: EmbodimentConfig, extra: Sequence[str] = (), exclude: Iterable[str] = ()
) -> dict[str, str]:
    """The default set plus ``extra`` specs, minus ``exclude`` names."""
    topics = default_topics(config)
    for spec in extra:
        name, msgtype = parse_topic_spec(spec)
        topics[name] = msgtype or topics.get(name, "")
    for name in exclude:
        topics.pop(name.strip(), None)
    return topics


def subscription_qos(offered: Sequence[tuple[bool, bool]]) -> tuple[bool, bool]:
    """(reliable, transient_local) that matches every publisher's (reliable, transient_local).

    Reliable only when every publisher is reliable (a reliable subscription never matches a
    best-effort publisher); transient-local only when every publisher keeps its last
    message for late joiners (so the recorder receives the current mode or e-stop state).
    """
    if not offered:
        raise ValueError("no publishers to match")
    return all(r for r, _ in offered), all(t for _, t in offered)


def check_types(wanted: Mapping[str, str], topic: str, advertised: Sequence[str]) -> str:
    """The type to subscribe ``topic`` with, or ValueError when the graph disagrees with the config."""
    configured = wanted.get(topic, "")
    if not advertised:
        raise ValueError(f"{topic} has no advertised type")
    if configured and configured not in advertised:
        raise ValueError(f"{topic} is published as {list(advertised)}, not the configured {configured}")
    if not configured and len(advertised) > 1:
        raise ValueError(f"{topic} is published with several types {list(advertised)}; configure one")
    return configured or advertised[0]
