"""The launch files: everywhere by AST and through a recording stand-in for launch/launch_ros;
with the real launch_ros wherever it imports.

``launch`` and ``launch_ros`` cannot be installed on a bare machine (they come with a ROS
distribution), so the stand-in is the thin seam: it records the constructor arguments of the
handful of classes ``bringup.launch_description`` uses, and the test checks those against the
graph description.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from qwen_vla_ros.bringup.graph import EMBODIMENTS, LAUNCH_ARGUMENTS, BringupOptions, build_graph, graph_environment
from qwen_vla_ros.ros_env import DDS_PROFILE_ENV

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"


def load_launch_file(embodiment: str) -> types.ModuleType:
    path = LAUNCH_DIR / f"{embodiment}.launch.py"
    spec = importlib.util.spec_from_file_location(f"launch_file_{embodiment}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_launch_file_compiles_and_names_its_embodiment(embodiment: str) -> None:
    path = LAUNCH_DIR / f"{embodiment}.launch.py"
    tree = ast.parse(path.read_text(), str(path))
    compile(tree, str(path), "exec")
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}
    assert constants.get("EMBODIMENT") == embodiment
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "generate_launch_description" in functions


def test_every_launch_file_is_installed_by_setup() -> None:
    setup = (LAUNCH_DIR.parent / "setup.py").read_text()
    assert 'share_files("launch")' in setup
    assert sorted(p.name for p in LAUNCH_DIR.glob("*.launch.py")) == sorted(f"{e}.launch.py" for e in EMBODIMENTS)


class Recorded:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class FakeLaunchConfiguration(Recorded):
    def perform(self, context) -> str:
        return context.values.get(self.args[0], LAUNCH_ARGUMENTS[self.args[0]][0])


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Stand-in modules recording what launch_description constructs."""
    classes = {name: type(name, (Recorded,), {}) for name in (
        "LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable", "Shutdown",
        "EnvironmentVariable", "Node")}
    launch = types.ModuleType("launch")
    launch.LaunchDescription = classes["LaunchDescription"]
    actions = types.ModuleType("launch.actions")
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable", "Shutdown"):
        setattr(actions, name, classes[name])
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.EnvironmentVariable = classes["EnvironmentVariable"]
    substitutions.LaunchConfiguration = FakeLaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = classes["Node"]
    for name, module in {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
                         "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(**classes)


def run_opaque(description, values: dict[str, str], environment: dict[str, str]) -> list:
    opaque = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    context = types.SimpleNamespace(values=values, environment=environment)
    return opaque[0].kwargs["function"](context, *opaque[0].kwargs["args"])


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_launch_file_declares_the_graph_arguments_and_starts_its_processes(fake_launch, embodiment: str) -> None:
    description = load_launch_file(embodiment).generate_launch_description()
    actions = description.args[0]
    declared = [a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"]
    assert declared == list(LAUNCH_ARGUMENTS)
    environment = {a.args[0]: a.args[1].kwargs["default_value"] for a in actions
                   if type(a).__name__ == "SetEnvironmentVariable"}
    assert environment == graph_environment()

    values = {"use_sim": "true", "record": "true", "joystick": "true", "checkpoint": "/ckpt", "instruction": "fold"}
    nodes = run_opaque(description, values, {"MUJOCO_GL": "osmesa"})
    expected = build_graph(BringupOptions.from_launch_arguments(embodiment, values)).processes
    assert [n.kwargs["name"] for n in nodes] == [p.ros_name for p in expected]
    for node, spec in zip(nodes, expected):
        assert node.kwargs["package"] == spec.package and node.kwargs["executable"] == spec.executable
        assert node.kwargs["namespace"] == spec.namespace
        assert node.kwargs["parameters"] == [spec.parameters]
        assert node.kwargs["remappings"] == list(spec.remappings)
        assert (node.kwargs["on_exit"] is not None) == spec.required
    sim = nodes[0]
    assert sim.kwargs["name"] == "sim_node" and sim.kwargs["additional_env"]["MUJOCO_GL"] == "osmesa", \
        "a variable the user set wins over the graph's default"


def test_real_robot_launch_without_sim_has_no_sim_node(fake_launch) -> None:
    description = load_launch_file("aloha").generate_launch_description()
    nodes = run_opaque(description, {}, {})
    names = [n.kwargs["name"] for n in nodes]
    assert names == ["camera"] * 4 + ["trial_recorder", "policy_node", "aloha_controller", "joystick_node"], \
        "the cameras' drivers, then the defaults: recorder and joystick on"
    assert [n.kwargs["namespace"] for n in nodes[:4]] == ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
    assert {n.kwargs["package"] for n in nodes[:4]} == {"realsense2_camera"}


def test_launch_files_with_real_launch_ros() -> None:
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (it comes with a ROS 2 distribution)")
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    from launch import LaunchContext

    for embodiment in EMBODIMENTS:
        description = load_launch_file(embodiment).generate_launch_description()
        declared = [e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)]
        assert declared == list(LAUNCH_ARGUMENTS)
        context = LaunchContext()
        context.launch_configurations.update({name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()})
        context.launch_configurations.update(use_sim="true", record="true")
        opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
        nodes = [a for a in opaque.execute(context) if isinstance(a, Node)]
        expected = build_graph(BringupOptions(embodiment, use_sim=True, record=True)).processes
        assert len(nodes) == len(expected)


def test_launch_nodes_run_in_the_mode_and_enclaves_asked_for(fake_launch, tmp_path: Path) -> None:
    """multi_host:= and security:= reach every Node, whatever the launching shell exported."""
    description = load_launch_file("aloha").generate_launch_description()
    shell = {DDS_PROFILE_ENV: "/old/fastdds_shm.xml", "ROS_SECURITY_STRATEGY": "Permissive"}
    single = run_opaque(description, {"use_sim": "true"}, shell)
    for node in single:
        assert node.kwargs["additional_env"][DDS_PROFILE_ENV].endswith("config/fastdds_shm.xml")
        assert node.kwargs["additional_env"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
        assert node.kwargs["ros_arguments"] == [] and "ROS_SECURITY_ENABLE" not in node.kwargs["additional_env"]
    names = [n.kwargs["name"] for n in single]
    for name in names:
        (tmp_path / "enclaves" / "qwen_vla" / name).mkdir(parents=True)
    secure = run_opaque(description, {"use_sim": "true", "multi_host": "true", "security": str(tmp_path)}, shell)
    for node in secure:
        env = node.kwargs["additional_env"]
        assert env[DDS_PROFILE_ENV].endswith("config/fastdds_multi_host.xml")
        assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
        assert (env["ROS_SECURITY_KEYSTORE"], env["ROS_SECURITY_ENABLE"], env["ROS_SECURITY_STRATEGY"]) == (
            str(tmp_path), "true", "Enforce")
        assert node.kwargs["ros_arguments"] == ["--enclave", f"/qwen_vla/{node.kwargs['name']}"]
