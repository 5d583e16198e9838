"""The graph contract: declared once, true of the running nodes, and what the docs show.

The unit tests judge the contract against facts read elsewhere: the embodiment YAML files
themselves, the Interbotix and realsense2_camera topic layouts, and the publishers each
node is meant to have (the spec below). The DDS test starts the nodes and reads their real
publishers, subscriptions, services and clients from the ROS graph.
"""
from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from qwen_vla_ros.config import EMBODIMENTS, load_embodiment, parse_override
from qwen_vla_ros.contract import RUNTIME_TOPICS, SERVICES, NodeRole, QosKind, graph_topics, role_view
from qwen_vla_ros.contract_tables import BEGIN, END, markdown, variants
from qwen_vla_ros.recording.topics import default_topics

REPO = Path(__file__).resolve().parent.parent
MSG_TYPE = re.compile(r"^[a-z][a-z0-9_]*/msg/[A-Z][A-Za-z0-9]*$")
SRV_TYPE = re.compile(r"^[a-z][a-z0-9_]*/srv/[A-Z][A-Za-z0-9]*$")
FORWARD = "outputs=[{adapter: forward_command, arms: [left, right]}]"

# Who publishes each fixed topic, as the nodes are meant to (docs/architecture.md, the issue).
PUBLISHERS = {
    "/qwen_vla/action_chunk": {"policy_node", "expert_node"},  # the scripted expert in the policy's place (collect)
    "/qwen_vla/controller/committed": {"qwen_vla_controller"},
    "/qwen_vla/controller/command": {"qwen_vla_controller"},
    "/qwen_vla/controller/state": {"qwen_vla_controller"},
    "/qwen_vla/mode": {"qwen_vla_controller"},
    "/diagnostics": {"qwen_vla_controller", "policy_node", "sim_node", "camera_node"},
    "/qwen_vla/heartbeat": {"qwen_vla_controller", "policy_node", "camera_node"},
    "/qwen_vla/instruction": {"operator"},
    "/qwen_vla/sim/success": {"sim_node"},
    "/qwen_vla/trial/next_condition": {"trial_recorder"},
    "/clock": {"sim_node"},
    "/qwen_vla/policy/heartbeat": {"policy_node", "expert_node"},
    "/qwen_vla/sim/randomization": {"operator"},
    "/qwen_vla/expert/command": {"operator"},
    "/qwen_vla/expert/status": {"expert_node"},
    "/qwen_vla/controller/start_pose": {"qwen_vla_controller"},
    "/qwen_vla/trial/event": {"trial_recorder"},
}


def test_fixed_topics_have_exactly_the_documented_publishers() -> None:
    assert {t.name: {r.value for r in t.publishers} for t in RUNTIME_TOPICS} == PUBLISHERS


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_names_are_unique_absolute_and_types_well_formed(name: str) -> None:
    for config in variants(name):
        topics = graph_topics(config)
        names = [t.name for t in topics]
        assert len(names) == len(set(names)), f"{config.name}: a topic is declared twice"
        assert all(n.startswith("/") for n in names)
        assert [t.msg_type for t in topics if not MSG_TYPE.match(t.msg_type)] == []
        assert not {s.name for s in SERVICES} & set(names)
    assert len({s.name for s in SERVICES}) == len(SERVICES)
    assert [s.srv_type for s in SERVICES if not SRV_TYPE.match(s.srv_type)] == []


@pytest.mark.parametrize("name", ["aloha_mobile", "widowx"])
def test_config_topics_are_the_ones_the_yaml_names(name: str) -> None:
    """Names come from the YAML file itself, the Interbotix driver's command topics and
    realsense2_camera's camera_info beside each image."""
    raw = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    expected = {c["topic"] for c in raw["cameras"]} | {c["topic"].rsplit("/", 1)[0] + "/camera_info" for c in raw["cameras"]}
    expected |= {a["joint_state_topic"] for a in raw["arms"]}
    for output in raw["outputs"]:
        if output["adapter"] == "interbotix":
            namespaces = {a["name"]: a["namespace"] for a in raw["arms"]}
            expected |= {f"/{namespaces[a]}/commands/{kind}" for a in output["arms"] for kind in ("joint_group", "joint_single")}
        else:
            expected.add(output["topic"])
    if "base" in raw:
        expected.add(raw["base"]["odom_topic"])
    expected |= {raw["teleop"]["joy_topic"], raw["safety"].get("estop_topic", "/qwen_vla/estop")}
    config = load_embodiment(name)
    assert {t.name for t in graph_topics(config)} - {t.name for t in RUNTIME_TOPICS} == expected
    leaders = raw["teleop"].get("leader_follow", {}).get("topics", {})
    if leaders:
        enabled = load_embodiment(name, {"teleop.leader_follow.enabled": True})
        assert set(leaders.values()) <= {t.name for t in role_view(NodeRole.CONTROLLER, enabled).subscribes}


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_recorder_defaults_are_derived_from_the_contract(name: str) -> None:
    config = load_embodiment(name)
    recorded = default_topics(config)
    # /clock aside: rclpy subscribes to it for every node under use_sim_time, the recorder need not record it
    assert recorded == {t.name: t.msg_type for t in graph_topics(config)
                        if NodeRole.RECORDER in t.subscribers and t.name != "/clock"}
    raw = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    assert {c["topic"] for c in raw["cameras"]} <= set(recorded), "every camera is recorded"
    assert {a["joint_state_topic"] for a in raw.get("arms", [])} <= set(recorded)
    assert {"/qwen_vla/action_chunk", "/qwen_vla/controller/command", "/qwen_vla/mode"} <= set(recorded)


def _spelled_topic_names(path: Path, names: set[str]) -> list[str]:
    """String constants (docstrings aside) that are, or start with, a contract name."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value in names or node.value.startswith("/qwen_vla/"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    return found


def test_topic_and_service_names_are_spelled_only_in_the_contract() -> None:
    """Product code takes names from qwen_vla_ros/contract.py (config defaults name config topics)."""
    names = {t.name for t in RUNTIME_TOPICS} | {s.name for s in SERVICES}
    files = [p for p in sorted((REPO / "qwen_vla_ros").rglob("*.py")) + sorted((REPO / "bench").glob("*.py"))
             if p.name != "contract.py" and "config" not in p.relative_to(REPO).parts]
    assert [hit for path in files for hit in _spelled_topic_names(path, names)] == []


def test_architecture_tables_equal_the_generated_ones() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    assert BEGIN in text and END in text, "docs/architecture.md lost its contract table markers"
    documented = text[text.index(BEGIN): text.index(END) + len(END)]
    assert documented == markdown(), "docs/architecture.md is stale: paste the output of `qwen-vla-ros contract`"


def test_contract_command_prints_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_vla_ros.cli import main

    assert main(["contract"]) == 0
    assert capsys.readouterr().out == markdown() + "\n"


def test_committed_codec_time_convention() -> None:
    """Row k of a committed message is the command due at stamp + (k + 1) control periods, as the
    policy's CommittedHistory reads it back."""
    pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
    from qwen_vla_ros.inference.committed import CommittedHistory
    from qwen_vla_ros.nodes.ros_contract import committed_to_trajectory, trajectory_to_committed

    names, period, stamp = ("a", "b"), 0.02, 1_700_000_000_000_000_000
    rows = np.arange(10.0).reshape(5, 2)
    message = committed_to_trajectory(stamp, names, rows, period)
    assert [p.time_from_start.nanosec for p in message.points] == [20_000_000 * (k + 1) for k in range(5)]
    history = CommittedHistory(names)
    history.add(*trajectory_to_committed(message))
    np.testing.assert_allclose(history.resample(stamp + 20_000_000, period, 5), rows)


# --------------------------------------------------------------------------- over DDS

IGNORED_TOPICS = {"/rosout", "/parameter_events"}


GATE = "qwen_vla_controller_chunk_gate"  # nodes.chunk_gate, started by the controller


def _graph(probe, node: str) -> tuple[set, set, set, set]:
    """(publishers, subscriptions, services, clients) of ``node`` as (name, type), rclpy's own left out."""
    def pairs(entries) -> set[tuple[str, str]]:
        return {(name, kind) for name, kinds in entries for kind in kinds
                if name not in IGNORED_TOPICS and not name.startswith(f"/{node}/")}

    return (pairs(probe.get_publisher_names_and_types_by_node(node, "/")),
            pairs(probe.get_subscriber_names_and_types_by_node(node, "/")),
            pairs(probe.get_service_names_and_types_by_node(node, "/")),
            pairs(probe.get_client_names_and_types_by_node(node, "/")))


def _contract(role: NodeRole, config) -> tuple[set, set, set, set]:
    view = role_view(role, config)
    return ({(t.name, t.msg_type) for t in view.publishes}, {(t.name, t.msg_type) for t in view.subscribes},
            {(s.name, s.srv_type) for s in view.serves}, {(s.name, s.srv_type) for s in view.calls})


@pytest.mark.ros
@pytest.mark.slow
def test_running_nodes_have_exactly_their_contract_endpoints(ros_domain, tiny_checkpoint, tmp_path: Path) -> None:
    """sim_node, the ALOHA controller, trial_recorder and joystick_node (no device: it retries)
    as processes, policy_node and camera_node (an image folder) in this process; each one's
    endpoints read from the graph equal its contract entries. The recorder subscribes to
    each of its topics once it has a publisher, so it is judged against the graph's published
    topics."""
    import rclpy
    from helpers.media import write_folder
    from rclpy.parameter import Parameter

    from qwen_vla_ros.nodes.camera_node import CameraNode
    from qwen_vla_ros.nodes.policy_node import PolicyNode
    from qwen_vla_ros.nodes.ros_contract import ANY_SUBSCRIPTION_QOS, PUBLISHER_QOS, SUBSCRIPTION_QOS

    aloha = load_embodiment("aloha", dict([parse_override(FORWARD)]))
    camera_overrides = [f"cameras.0.source={{type: video, path: {write_folder(tmp_path / 'frames', 3, 64, 48)}}}",
                        "cameras.0.width=64", "cameras.0.height=48"]
    camera_config = load_embodiment("aloha", dict(parse_override(o) for o in camera_overrides))
    processes = {
        "sim_node": ["-m", "qwen_vla_ros.nodes.sim_node", "--ros-args", "-p", f"config_overrides:=['{FORWARD}', "
                     "'sim.render_width=64', 'sim.render_height=48']", "-p", "camera_rate_hz:=2.0"],
        "qwen_vla_controller": ["-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p",
                                f"config_overrides:=['{FORWARD}']"],
        "trial_recorder": ["-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p",
                           f"config_overrides:=['{FORWARD}']", "-p", f"output_dir:={tmp_path / 'trials'}",
                           "-p", "discovery_period_s:=0.2"],
        "joystick_node": ["-m", "qwen_vla_ros.nodes.joystick_node", "--ros-args", "-p",
                          "device_path:=/dev/input/by-id/no-such-pad", "-p", "retry_period_s:=1.0"],
    }
    children = {name: ros_domain.start_process(*args) for name, args in processes.items()}
    local = []
    try:
        local.append(PolicyNode(context=ros_domain.context, parameter_overrides=[
            Parameter("checkpoint", value=str(tiny_checkpoint)), Parameter("config_overrides", value=[FORWARD]),
            Parameter("runtime_overrides", value=["clock_check.heartbeat_hz=0"])]))
        local.append(CameraNode(context=ros_domain.context, parameter_overrides=[
            Parameter("config_overrides", value=camera_overrides), Parameter("runtime_overrides",
                                                                             value=["clock_check.heartbeat_hz=0"])]))
        probe = rclpy.create_node("contract_probe", context=ros_domain.context)
        expected = {
            "qwen_vla_controller": _contract(NodeRole.CONTROLLER, aloha),
            "policy_node": _contract(NodeRole.POLICY, aloha),
            "sim_node": _contract(NodeRole.SIM, aloha),
            "camera_node": _contract(NodeRole.CAMERA, camera_config),
            "joystick_node": _contract(NodeRole.JOYSTICK, aloha),
        }
        recorder_contract = _contract(NodeRole.RECORDER, aloha)
        actual: dict[str, tuple] = {}
        deadline = time.monotonic() + 180.0
        while time.monotonic() < deadline:
            dead = {name: child for name, child in children.items() if child.poll() is not None}
            assert not dead, {name: child.communicate()[0][-3000:] for name, child in dead.items()}
            running = {name for name, namespace in probe.get_node_names_and_namespaces() if namespace == "/"}
            actual = {name: _graph(probe, name) if name in running else (set(), set(), set(), set())
                      for name in [*expected, "trial_recorder"]}
            if GATE in running:  # the controller's chunk subscription is its gate's, a child process of its own
                actual["qwen_vla_controller"] = tuple(mine | gates for mine, gates in zip(
                    actual["qwen_vla_controller"], _graph(probe, GATE), strict=True))
            published = {topic for topic, _ in probe.get_topic_names_and_types() if probe.count_publishers(topic)}
            recorder_expected = (recorder_contract[0], {s for s in recorder_contract[1] if s[0] in published},
                                 *recorder_contract[2:])
            if all(actual[name] == want for name, want in expected.items()) and actual["trial_recorder"] == recorder_expected:
                break
            time.sleep(0.5)
        for name, want in [*expected.items(), ("trial_recorder", recorder_expected)]:
            kinds = ("publishers", "subscriptions", "services", "clients")
            for kind, got, contract in zip(kinds, actual[name], want, strict=True):
                assert got == contract, f"{name} {kind}: extra {sorted(got - contract)}, missing {sorted(contract - got)}"
        assert ("/qwen_vla/instruction", "std_msgs/msg/String") not in actual["trial_recorder"][1], \
            "nobody publishes the instruction here, so the recorder must not have subscribed to it"
        # Each endpoint's reliability and durability are its QoS kind's (the recorder matches publishers instead).
        for name, config in (("qwen_vla_controller", aloha), ("policy_node", aloha), ("sim_node", aloha),
                             ("camera_node", camera_config), ("joystick_node", aloha)):
            view = role_view(NodeRole(name), config)
            for topics, offered, find in ((view.publishes, PUBLISHER_QOS, probe.get_publishers_info_by_topic),
                                          (view.subscribes, SUBSCRIPTION_QOS, probe.get_subscriptions_info_by_topic)):
                for topic in topics:
                    endpoints = [e for e in find(topic.name) if e.node_name in (name, f"{name}_chunk_gate")]
                    got = {(e.qos_profile.reliability, e.qos_profile.durability) for e in endpoints}
                    if topic.qos is QosKind.ANY and offered is SUBSCRIPTION_QOS:
                        wants = ANY_SUBSCRIPTION_QOS  # one subscription per profile, matching any publisher
                    else:
                        wants = (offered[topic.qos],)
                    assert len(endpoints) == len(wants), f"{name} {topic.name}: {len(endpoints)} endpoints"
                    assert got == {(w.reliability, w.durability) for w in wants}, \
                        f"{name} {topic.name}: not {topic.qos.value} QoS"
    finally:
        for node in local:
            node.close()
            node.destroy_node()
        for child in children.values():
            ros_domain.stop_process(child)
