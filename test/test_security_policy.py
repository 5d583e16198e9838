"""SROS2: the generated access-control policy against the graph contract and the SROS2 policy
format, and security that is asked for but cannot hold failing closed with a real node.

The policy's claims are judged against sources read independently of the generator: the
contract's declarations (who publishes and subscribes what), the shipped embodiment YAML files
(the config-named topics), and the issue's requirements spelled out here (only the policy
node publishes chunks, only the joystick node publishes /joy, only the operator resets the
e-stop). The format is the documented SROS2 policy format 0.2.0; where the sros2 package is
installed (a ROS distribution), its own schema validates the file too.
"""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from qwen_vla_ros.bringup.graph import CONTROLLERS, EMBODIMENTS
from qwen_vla_ros.bringup.security import policy_xml
from qwen_vla_ros.cli import main as cli_main
from qwen_vla_ros.contract import RUNTIME_TOPICS, SERVICES, NodeRole
from qwen_vla_ros.paths import config_dir

REPO = Path(__file__).resolve().parent.parent
RULES = {"topics": ("topic", {"publish", "subscribe"}), "services": ("service", {"reply", "request"})}
PROCESS_OF_ROLE = {NodeRole.POLICY: "policy_node", NodeRole.SIM: "sim_node", NodeRole.RECORDER: "trial_recorder",
                   NodeRole.JOYSTICK: "joystick_node", NodeRole.OPERATOR: "operator", NodeRole.MONITOR: "monitor",
                   NodeRole.DRIVER: "driver"}
BUILTIN_TOPICS = {"/rosout", "/parameter_events"}


def parse(text: str) -> dict[tuple[str, str], set[str]]:
    """(rule, enclave) -> names, checking the documented structure on the way.

    policy(version 0.2.0) > enclaves > enclave(path) > profiles > profile(ns, node) >
    topics(publish|subscribe="ALLOW") > topic, services(reply|request="ALLOW") > service;
    ROS names only: the rt/ rq/ rr/ mangling belongs to permissions.xml, not the policy.
    """
    root = ET.fromstring(text)
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    assert [child.tag for child in root] == ["enclaves"]
    rules: dict[tuple[str, str], set[str]] = defaultdict(set)
    paths = []
    for enclave in root.find("enclaves"):
        assert enclave.tag == "enclave" and set(enclave.attrib) == {"path"}
        paths.append(enclave.get("path"))
        assert [child.tag for child in enclave] == ["profiles"]
        for profile in enclave.find("profiles"):
            assert profile.tag == "profile" and set(profile.attrib) == {"ns", "node"}
            assert profile.get("ns").startswith("/") and profile.get("node")
            for group in profile:
                item, allowed_rules = RULES[group.tag]
                assert len(group.attrib) == 1 and set(group.attrib) <= allowed_rules, group.attrib
                (rule, value), = group.attrib.items()
                assert value == "ALLOW" and len(group) > 0
                for entry in group:
                    name = entry.text or ""
                    assert entry.tag == item and name.startswith(("/", "~/")), name
                    assert not name.lstrip("/").startswith(("rt/", "rq/", "rr/")), f"{name}: mangled"
                    rules[(rule, enclave.get("path"))].add(name)
    assert len(paths) == len(set(paths)), "one enclave per path"
    return rules


def holders(rules: dict[tuple[str, str], set[str]], rule: str, name: str) -> set[str]:
    return {enclave for (r, enclave), names in rules.items() if r == rule and name in names}


def enclave_of(role: NodeRole, embodiment: str) -> str:
    return "/qwen_vla/" + (CONTROLLERS[embodiment] if role is NodeRole.CONTROLLER else PROCESS_OF_ROLE.get(role, "camera_node"))


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_policy_grants_exactly_the_contracts_runtime_topics_and_services(embodiment: str) -> None:
    rules = parse(policy_xml(embodiment))
    enclaves = {enclave for _, enclave in rules}
    for topic in RUNTIME_TOPICS:
        for rule, roles in (("publish", topic.publishers), ("subscribe", topic.subscribers)):
            expected = {enclave_of(role, embodiment) for role in roles} & enclaves
            assert holders(rules, rule, topic.name) == expected, (rule, topic.name)
    for service in SERVICES:
        for rule, roles in (("reply", service.servers), ("request", service.clients)):
            expected = {enclave_of(role, embodiment) for role in roles} & enclaves
            assert holders(rules, rule, service.name) == expected, (rule, service.name)
    contract_names = {t.name for t in RUNTIME_TOPICS} | {s.name for s in SERVICES}
    assert "/qwen_vla/operator" in enclaves and f"/qwen_vla/{CONTROLLERS[embodiment]}" in enclaves
    # The other way: every name granted is in the contract, the config's topics, or a node's own.
    shipped = yaml.safe_load((config_dir() / f"{embodiment}.yaml").read_text())
    # Config-named topics live under the namespaces the YAML names (drivers', cameras'); the
    # Joy and e-stop topics have model defaults the shipped YAML may leave out.
    namespaces = {"/" + topic.strip("/").split("/")[0] for topic in _yaml_topics(shipped)}
    namespaces |= {"/" + camera["name"] for camera in shipped.get("cameras", [])}
    defaults = {"/joy", "/qwen_vla/estop"}
    for (rule, enclave), names in rules.items():
        for name in names - contract_names - BUILTIN_TOPICS - defaults:
            assert name.startswith(("~/", "/*/")) or name in _yaml_topics(shipped) or any(
                name.startswith(ns + "/") for ns in namespaces), (
                f"{enclave} may {rule} {name}, which neither the contract nor {embodiment}.yaml names")


def _yaml_topics(data: dict) -> list[str]:
    """Every string value of the YAML that looks like a topic (starts with '/')."""
    found = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack += list(value.values())
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, str) and value.startswith("/"):
            found.append(value)
    return found


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_who_may_command_the_robot(embodiment: str) -> None:
    rules = parse(policy_xml(embodiment))
    shipped = yaml.safe_load((config_dir() / f"{embodiment}.yaml").read_text())
    joy_topic = shipped.get("teleop", {}).get("joy_topic", "/joy")
    estop_topic = shipped.get("safety", {}).get("estop_topic", "/qwen_vla/estop")
    assert holders(rules, "publish", "/qwen_vla/action_chunk") == {"/qwen_vla/policy_node"}
    assert holders(rules, "publish", joy_topic) == {"/qwen_vla/joystick_node"}
    assert holders(rules, "request", "/qwen_vla/estop/reset") == {"/qwen_vla/operator"}
    assert holders(rules, "reply", "/qwen_vla/estop/reset") == {f"/qwen_vla/{CONTROLLERS[embodiment]}"}
    for service in ("start", "stop_success", "stop_failure", "abort"):
        # The controller calls them for the joystick's trial buttons (the contract says so).
        assert holders(rules, "request", f"/qwen_vla/trial/{service}") == {
            "/qwen_vla/operator", f"/qwen_vla/{CONTROLLERS[embodiment]}"}
    assert holders(rules, "publish", estop_topic) == {"/qwen_vla/operator", f"/qwen_vla/{CONTROLLERS[embodiment]}"}
    for arm in shipped.get("arms", []):
        assert holders(rules, "publish", arm["joint_state_topic"]) == {"/qwen_vla/driver", "/qwen_vla/sim_node"}
    assert not rules.get(("publish", "/qwen_vla/monitor"), set()) - BUILTIN_TOPICS, "the monitor only reads"
    for (rule, enclave), names in rules.items():
        if rule == "request":
            assert not any(name.startswith("~/") or name.endswith("parameters") for name in names), (
                f"{enclave} could change another node's parameters")


def test_policy_validates_against_the_sros2_schema_where_sros2_is_installed(tmp_path: Path) -> None:
    sros2_policy = pytest.importorskip("sros2.policy", reason="sros2 is not installed (it comes with a ROS 2 distribution)")
    path = tmp_path / "policy.xml"
    path.write_text(policy_xml("aloha"))
    sros2_policy.load_policy(path)


def test_policy_command_writes_the_file_and_refuses_an_unknown_embodiment(tmp_path: Path, capsys) -> None:
    out = tmp_path / "policy.xml"
    assert cli_main(["security", "policy", "--embodiment", "widowx", "-o", str(out)]) == 0
    rules = parse(out.read_text())
    assert ("publish", "/qwen_vla/widowx_controller") in rules
    with pytest.raises(SystemExit) as exited:
        cli_main(["security", "policy", "--embodiment", "spot"])
    assert exited.value.code == 2


# -- fail closed: security asked for but missing never runs open ----------------------------------

def secure_env(ros_domain, keystore: Path, **changes: str) -> dict[str, str]:
    env = dict(ros_domain.env, ROS_SECURITY_KEYSTORE=str(keystore), ROS_SECURITY_ENABLE="true",
               ROS_SECURITY_STRATEGY="Enforce")
    env.update(changes)
    return env


@pytest.mark.ros
@pytest.mark.parametrize("strategy", ["Enforce", "Permissive"])
def test_a_node_asked_to_run_secured_refuses_to_start_when_security_cannot_hold(ros_domain, tmp_path: Path,
                                                                                strategy: str) -> None:
    """The controller, started as bringup starts it, with a keystore holding its enclave.

    Here the RMW (PyPI Fast DDS) has no DDS-Security; on a robot computer whose Fast DDS has it,
    the keystore's placeholder certificates fail to load instead: either way exit 2, never open.
    Permissive with the node's enclave missing is what rcl would run open: it is refused
    before DDS is touched.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    (tmp_path / "keystore" / "enclaves").mkdir(parents=True)
    enclave = tmp_path / "keystore" / "enclaves" / "qwen_vla" / ("base_controller" if strategy == "Enforce" else "other")
    enclave.mkdir(parents=True)
    for name in ("cert.pem", "key.pem", "identity_ca.cert.pem", "permissions_ca.cert.pem", "governance.p7s",
                 "permissions.p7s"):
        (enclave / name).write_text("placeholder\n")
    observer = rclpy.create_node("observer", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(observer)
    child = subprocess.Popen(
        [sys.executable, "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-r", "__node:=base_controller", "-p", "config:=mobile_base",
         "--enclave", "/qwen_vla/base_controller"],
        env=secure_env(ros_domain, tmp_path / "keystore", ROS_SECURITY_STRATEGY=strategy), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[str] = set()

    def joined_or_ended() -> bool:
        seen.update(name for name, _ in observer.get_node_names_and_namespaces())
        return "base_controller" in seen or child.poll() is not None

    try:
        ros_domain.spin_until(executor, joined_or_ended, timeout=60)
    finally:
        if child.poll() is None:
            child.kill()  # it ran: the assertions below say so
        output = child.communicate(timeout=30)[0]
        observer.destroy_node()
    assert "base_controller" not in seen, f"the node joined the graph without security: {output}"
    assert child.returncode == 2, output
    assert "does not start" in output and "Traceback" not in output, output
    if strategy == "Permissive":
        assert "Enforce" in output


@pytest.mark.ros
@pytest.mark.slow
def test_every_node_bringup_starts_with_security_refuses_when_it_cannot_hold(ros_domain, tmp_path: Path) -> None:
    """``up --security`` without a secure DDS: each process, started with exactly the runner's
    environment and enclave, exits 2 with the reason; none runs open (the PyPI Fast DDS has no
    DDS-Security; on a robot computer the keystore's empty enclaves fail instead)."""
    import time

    from qwen_vla_ros.bringup.graph import BringupOptions, build_graph
    from qwen_vla_ros.bringup.runner import ProcessGroup

    keystore = tmp_path / "keystore"
    names = [p.name for p in build_graph(BringupOptions("aloha", use_sim=True, record=True, joystick=True)).processes]
    for name in names:
        (keystore / "enclaves" / "qwen_vla" / name).mkdir(parents=True)
    graph = build_graph(BringupOptions("aloha", use_sim=True, record=True, joystick=True, security=str(keystore)))
    group = ProcessGroup(graph.processes, env=ros_domain.env, echo=None)
    try:
        group.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(c.popen.poll() is None for c in group.children):
            time.sleep(0.2)
    finally:
        exits = {ended.name: ended for ended in group.stop()}
    assert sorted(exits) == sorted(names)
    for name, ended in exits.items():
        output = "\n".join(ended.tail)
        assert ended.returncode == 2, f"{name} did not refuse: {ended.describe()}"
        assert "does not start" in output and "Traceback" not in output, ended.describe()
