"""SROS2 access control generated from the graph contract: who may publish, subscribe, serve and call what.

``qwen-vla-ros security policy`` writes an SROS2 policy (format 0.2.0: ``policy > enclaves >
enclave path= > profiles > profile ns= node= > topics publish|subscribe / services
reply|request``); ``ros2 security generate_artifacts`` turns it into one enclave per node
with signed permissions (docs/security.md). Each of the graph's processes gets the enclave
``up --security`` and ``security:=`` start it in (``/qwen_vla/<process>``) and exactly the
topics and services the contract gives its role. Parties outside the runtime get one enclave
each: ``/qwen_vla/operator`` (the only one that may reset the e-stop), ``/qwen_vla/monitor``
(read only) and ``/qwen_vla/driver`` (the robot's drivers). No ROS import.
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from qwen_vla_ros.bringup.graph import (
    CONTROLLERS,
    EMBODIMENTS,
    BringupOptions,
    ProcessSpec,
    build_graph,
    sim_overrides,
)
from qwen_vla_ros.config import load_embodiment, parse_override
from qwen_vla_ros.contract import (
    RUNTIME_TOPICS,
    SERVICES,
    NodeRole,
    Service,
    Topic,
    config_services,
    config_topics,
)
from qwen_vla_ros.ros_env import enclave_name

POLICY_VERSION = "0.2.0"  # the SROS2 policy schema this writes
OPERATOR_ENCLAVE = enclave_name("operator")
MONITOR_ENCLAVE = enclave_name("monitor")
DRIVER_ENCLAVE = enclave_name("driver")
# What every rclpy/rclcpp node does by itself: log, announce parameter changes, serve its
# parameters and type descriptions. Nobody is granted requests on the parameter services, so
# no enclave can change another node's parameters.
NODE_PUBLISHES = ("/rosout", "/parameter_events")
NODE_SERVICES = tuple(f"~/{name}" for name in (
    "describe_parameters", "get_parameter_types", "get_parameters", "get_type_description", "list_parameters",
    "set_parameters", "set_parameters_atomically",
))
PROCESS_ROLES = {"sim_node": NodeRole.SIM, "policy_node": NodeRole.POLICY, "trial_recorder": NodeRole.RECORDER,
                 "camera_node": NodeRole.CAMERA, "joystick_node": NodeRole.JOYSTICK}


@dataclass(frozen=True)
class Grant:
    """What one enclave may do, in ROS names (absolute, or ``~/`` for the node's own)."""

    enclave: str
    node: str
    namespace: str
    publish: frozenset[str]
    subscribe: frozenset[str]
    reply: frozenset[str]
    request: frozenset[str]


def graph_contract(embodiment: str, config: str = "") -> tuple[list[Topic], list[Service], list[ProcessSpec]]:
    """Every topic, service and process of an embodiment's graph, on the robot and in simulation."""
    processes: dict[str, ProcessSpec] = {}
    configs = []
    for use_sim in (False, True):
        graph = build_graph(BringupOptions(embodiment, use_sim=use_sim, record=True, joystick=True, config=config))
        processes |= {spec.name: spec for spec in graph.processes}
        overrides = sim_overrides(graph.embodiment) if use_sim else []
        configs.append(load_embodiment(config or embodiment, dict(parse_override(text) for text in overrides)))
    merged: dict[str, Topic] = {t.name: t for t in RUNTIME_TOPICS}
    for topic in (t for c in configs for t in config_topics(c)):
        known = merged.get(topic.name)
        if known is not None:
            topic = Topic(topic.name, topic.msg_type or known.msg_type, topic.qos, topic.publishers | known.publishers,
                          topic.subscribers | known.subscribers, known.summary)
        merged[topic.name] = topic
    driver_calls = {s.name: s for c in configs for s in config_services(c)}  # the controller's Interbotix preflight
    return list(merged.values()), [*SERVICES, *driver_calls.values()], list(processes.values())


def _role_grant(enclave: str, node: str, role: NodeRole, topics: list[Topic], services: list[Service]) -> Grant:
    return Grant(
        enclave, node, "/",
        frozenset(t.name for t in topics if role in t.publishers) | frozenset(NODE_PUBLISHES),
        frozenset(t.name for t in topics if role in t.subscribers),
        frozenset(s.name for s in services if role in s.servers) | frozenset(NODE_SERVICES),
        frozenset(s.name for s in services if role in s.clients),
    )


def camera_driver_grant(spec: ProcessSpec) -> Grant:
    """A camera driver (realsense2_camera) may publish under its own namespace and its remapped image topic."""
    namespace = "/" + spec.namespace.strip("/")
    publish = {f"{namespace}/*", *(target for _, target in spec.remappings), *NODE_PUBLISHES}
    return Grant(spec.enclave or enclave_name(spec.name), spec.ros_name, namespace, frozenset(publish), frozenset(),
                 frozenset(NODE_SERVICES), frozenset())


def grants(embodiment: str, config: str = "") -> list[Grant]:
    """One grant per enclave: the graph's processes, then operator, monitor and driver."""
    topics, services, processes = graph_contract(embodiment, config)
    roles = {**PROCESS_ROLES, CONTROLLERS[embodiment]: NodeRole.CONTROLLER}
    result = []
    for spec in processes:
        if spec.name in roles:
            result.append(_role_grant(enclave_name(spec.name), spec.ros_name, roles[spec.name], topics, services))
        else:
            result.append(camera_driver_grant(spec))
    result.append(_role_grant(OPERATOR_ENCLAVE, "operator", NodeRole.OPERATOR, topics, services))
    result.append(_role_grant(MONITOR_ENCLAVE, "monitor", NodeRole.MONITOR, topics, services))
    driver = _role_grant(DRIVER_ENCLAVE, "driver", NodeRole.DRIVER, topics, services)
    # A driver runs under its own node names, which this policy cannot know: its parameter services by pattern.
    driver_services = frozenset(f"/*/{name[2:]}" for name in NODE_SERVICES)
    result.append(Grant(driver.enclave, driver.node, driver.namespace, driver.publish, driver.subscribe,
                        driver_services, driver.request))
    return result


def policy_xml(embodiment: str, config: str = "") -> str:
    """The SROS2 policy document for ``embodiment`` (``config``: a lab YAML in its place)."""
    root = ET.Element("policy", version=POLICY_VERSION)
    enclaves = ET.SubElement(root, "enclaves")
    for grant in grants(embodiment, config):
        enclave = ET.SubElement(enclaves, "enclave", path=grant.enclave)
        profile = ET.SubElement(ET.SubElement(enclave, "profiles"), "profile", ns=grant.namespace, node=grant.node)
        for tag, item, names, rule in (("topics", "topic", grant.publish, "publish"),
                                       ("topics", "topic", grant.subscribe, "subscribe"),
                                       ("services", "service", grant.reply, "reply"),
                                       ("services", "service", grant.request, "request")):
            if names:
                group = ET.SubElement(profile, tag, {rule: "ALLOW"})
                for name in sorted(names):
                    ET.SubElement(group, item).text = name
    ET.indent(root)
    header = (f"<!-- SROS2 access control for qwen_vla_ros, embodiment {config or embodiment}: generated by "
              "'qwen-vla-ros security policy' from the graph contract; regenerate rather than edit. -->\n")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + header + ET.tostring(root, encoding="unicode") + "\n"


def _policy(args: argparse.Namespace) -> int:
    text = policy_xml(args.embodiment, args.config)
    if args.output in ("", "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: create the keystore from it as docs/security.md shows", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("security", help="SROS2: the access-control policy of the node graph")
    commands = parser.add_subparsers(dest="security_command", required=True)
    policy = commands.add_parser(
        "policy", help="write the SROS2 policy XML generated from the graph contract",
        description="Each node may publish and subscribe exactly its contract topics; only /qwen_vla/operator may "
        "reset the e-stop. Feed it to 'ros2 security generate_artifacts -k KEYSTORE -p FILE'.",
    )
    policy.add_argument("--embodiment", choices=EMBODIMENTS, default="aloha",
                        help="the embodiment whose graph the policy covers (aloha)")
    policy.add_argument("--config", default="", help="embodiment YAML file of your robot (default: the shipped one)")
    policy.add_argument("-o", "--output", default="", metavar="FILE", help="where to write it (default: stdout)")
    policy.set_defaults(handler=_policy)
