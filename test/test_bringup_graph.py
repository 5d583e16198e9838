"""The node graph description (no ROS): which processes each embodiment starts, with what."""
from __future__ import annotations

import pytest
import yaml

from qwen_vla_ros.bringup.graph import (
    EMBODIMENTS,
    LAUNCH_ARGUMENTS,
    BringupOptions,
    build_graph,
    namespace_remaps,
    parse_namespaces,
)
from qwen_vla_ros.bringup.runner import child_environment
from qwen_vla_ros.config import load_embodiment, parse_override
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.paths import config_dir
from qwen_vla_ros.ros_env import DDS_PROFILE_ENV

RANGE = "ROS_AUTOMATIC_DISCOVERY_RANGE"


def overrides_of(spec) -> dict:
    return dict(parse_override(text) for text in spec.parameters.get("config_overrides", []))


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_every_embodiment_starts_policy_controller_and_optional_nodes(embodiment: str) -> None:
    bare = build_graph(BringupOptions(embodiment, record=False, joystick=False))
    names = [p.name for p in bare.processes if p.package == "qwen_vla_ros"]
    assert "policy_node" in names and any(n.endswith("_controller") for n in names)
    assert "sim_node" not in names and "trial_recorder" not in names and "joystick_node" not in names
    # shipped configs take frames from realsense2_camera topics, so camera_node has nothing to serve
    assert "camera_node" not in names
    drivers = [p for p in bare.processes if p.package == "realsense2_camera"]
    assert [p.namespace for p in drivers] == [c.name for c in bare.embodiment.cameras], "one driver per camera"

    full = build_graph(BringupOptions(embodiment, use_sim=True, record=True, joystick=True))
    names = [p.name for p in full.processes]
    assert names[0] == "sim_node" and "trial_recorder" in names and "joystick_node" in names
    assert names.index("trial_recorder") < names.index("policy_node"), "the recorder must see the first chunk"
    required = {p.name: p.required for p in full.processes}
    assert required.pop("joystick_node") is False and all(required.values())
    for spec in full.processes:
        assert spec.parameters["config"] == embodiment
        assert spec.module.startswith("qwen_vla_ros.nodes.")
        env = child_environment(spec, {})
        assert env[DDS_PROFILE_ENV] == str(config_dir() / "fastdds_shm.xml"), "single host unless asked otherwise"
        assert env[RANGE] == "LOCALHOST" and env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
        assert spec.enclave == "" and "--enclave" not in spec.ros_arguments("/p.yaml")


def test_multi_host_is_asked_for_and_a_users_shell_cannot_undo_either_mode(tmp_path) -> None:
    """Every process, ours and a camera driver alike, gets the mode's profile and range."""
    single = build_graph(BringupOptions("aloha"))
    multi = build_graph(BringupOptions("aloha", multi_host=True))
    stale_shell = {DDS_PROFILE_ENV: "/opt/ros/share/qwen_vla_ros/config/fastdds_shm.xml", RANGE: "LOCALHOST"}
    for spec in multi.processes:
        env = child_environment(spec, stale_shell)
        assert env[DDS_PROFILE_ENV] == str(config_dir() / "fastdds_multi_host.xml") and env[RANGE] == "SUBNET"
    wide_shell = {DDS_PROFILE_ENV: "/somewhere/fastdds_multi_host.xml", RANGE: "SUBNET", "QWEN_VLA_MULTI_HOST": "true"}
    for spec in single.processes:
        env = child_environment(spec, wide_shell)
        assert env[DDS_PROFILE_ENV] == str(config_dir() / "fastdds_shm.xml") and env[RANGE] == "LOCALHOST"
    own = tmp_path / "lab_network.xml"
    env = child_environment(single.process("policy_node"), {DDS_PROFILE_ENV: str(own)})
    assert env[DDS_PROFILE_ENV] == str(own), "a profile of the user's own is their explicit choice"


def test_security_puts_every_process_in_its_enclave_enforced(tmp_path) -> None:
    keystore = tmp_path / "keystore"
    options = BringupOptions("aloha", use_sim=True, record=True, joystick=True, security=str(keystore))
    with pytest.raises(InvalidArgumentError, match="no enclave for /qwen_vla/sim_node.*generate_artifacts"):
        build_graph(options)
    names = [p.name for p in build_graph(BringupOptions("aloha", use_sim=True, record=True, joystick=True)).processes]
    for name in names:
        (keystore / "enclaves" / "qwen_vla" / name).mkdir(parents=True)
    graph = build_graph(options)
    for spec in graph.processes:
        assert spec.ros_arguments("/p.yaml")[-2:] == ["--enclave", f"/qwen_vla/{spec.name}"]
        env = child_environment(spec, {"ROS_SECURITY_STRATEGY": "Permissive", "ROS_SECURITY_ENABLE": "false"})
        assert (env["ROS_SECURITY_KEYSTORE"], env["ROS_SECURITY_ENABLE"], env["ROS_SECURITY_STRATEGY"]) == (
            str(keystore), "true", "Enforce"), "the shell cannot weaken security asked for on the command line"
    robot = BringupOptions.from_launch_arguments("aloha", {"security": str(keystore), "multi_host": "true"})
    assert robot.security == str(keystore) and robot.multi_host
    (keystore / "enclaves" / "qwen_vla" / "cam_high_driver").mkdir()
    with pytest.raises(InvalidArgumentError, match="cam_low_driver"):
        build_graph(robot)


def test_controller_executable_matches_the_console_scripts() -> None:
    controllers = {e: build_graph(BringupOptions(e, joystick=False)).processes[-1] for e in EMBODIMENTS}
    assert {e: s.executable for e, s in controllers.items()} == {
        "aloha": "aloha_controller", "aloha_mobile": "aloha_controller",
        "widowx": "widowx_controller", "mobile_base": "base_controller",
    }
    from pathlib import Path

    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    for spec in build_graph(BringupOptions("aloha", use_sim=True, record=True, joystick=True)).processes:
        assert f'"{spec.executable} = {spec.module}:' in setup, f"{spec.executable} is no console script of {spec.module}"


@pytest.mark.parametrize("embodiment", ["aloha", "aloha_mobile", "widowx"])
def test_sim_replaces_interbotix_outputs_for_every_node_and_the_config_still_validates(embodiment: str) -> None:
    graph = build_graph(BringupOptions(embodiment, use_sim=True, record=True))
    shipped = load_embodiment(embodiment)
    for spec in graph.processes:
        config = load_embodiment(embodiment, overrides_of(spec))
        adapters = [o.adapter for o in config.outputs]
        assert "interbotix" not in adapters and "forward_command" in adapters
        assert len(config.outputs) == len(shipped.outputs), "other outputs (the base Twist) are kept"
        for camera in config.cameras:
            assert (camera.width, camera.height) == (shipped.sim.render_width, shipped.sim.render_height)


def test_real_robot_keeps_interbotix_and_passes_runtime_choices_quoted() -> None:
    instruction = "pick: the red # cube"
    graph = build_graph(BringupOptions("aloha", checkpoint="/ckpt/qwen vla", backend="onnxruntime",
                                       instruction=instruction))
    for spec in graph.processes:
        if spec.package != "qwen_vla_ros":
            continue  # the camera drivers take their own parameters
        assert "config_overrides" not in spec.parameters, "no overrides on the robot: an empty list has no type"
        runtime = dict(parse_override(t) for t in spec.parameters["runtime_overrides"])
        assert runtime == {"checkpoint": "/ckpt/qwen vla", "backend": "onnxruntime", "instruction": instruction}


def test_realsense_drivers_publish_on_the_configured_topics() -> None:
    """As the Interbotix ALOHA bringup: node 'camera' in each camera's namespace, colour only, not required."""
    config = load_embodiment("aloha")
    graph = build_graph(BringupOptions("aloha", config_overrides=[
        "cameras.0.source={type: topic, serial: '130322270123'}", "cameras.1.source={type: topic, driver: none}"]))
    drivers = {p.namespace: p for p in graph.processes if p.package == "realsense2_camera"}
    assert set(drivers) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}, "driver: none starts nothing"
    high = drivers["cam_high"]
    assert (high.name, high.ros_name, high.executable, high.module) == (
        "cam_high_driver", "camera", "realsense2_camera_node", "")
    assert not high.required and high.environment == graph.environment
    assert high.parameters["serial_no"] == "_130322270123", "ROS would read a bare serial as a number"
    assert "serial_no" not in drivers["cam_left_wrist"].parameters, "no serial: the first camera found"
    camera = config.cameras[0]
    assert high.parameters["rgb_camera.color_profile"] == f"{camera.width}x{camera.height}x{int(camera.fps)}"
    assert high.parameters["enable_depth"] is False and high.parameters["rgb_camera.color_format"] == "RGB8"
    assert high.remappings == (("/cam_high/camera/color/image_raw", camera.topic),)
    assert high.ros_arguments("/p.yaml")[:5] == ["--ros-args", "-r", "__node:=camera", "-r", "__ns:=/cam_high"]
    assert not [p for p in build_graph(BringupOptions("aloha", use_sim=True)).processes
                if p.package != "qwen_vla_ros"], "the sim renders the cameras"


def test_parameters_file_is_valid_ros_yaml() -> None:
    spec = build_graph(BringupOptions("aloha", use_sim=True, record=True, output_dir="/tmp/t")).process("trial_recorder")
    data = yaml.safe_load(yaml.safe_dump(spec.parameters_yaml()))
    assert data["/**"]["ros__parameters"]["output_dir"] == "/tmp/t"
    args = spec.ros_arguments("/p.yaml")
    assert args[:3] == ["--ros-args", "-r", "__node:=trial_recorder"] and ["--params-file", "/p.yaml"] == args[3:5]


def test_namespace_remaps_follow_the_older_puppet_names() -> None:
    config = load_embodiment("aloha")
    remaps = dict(namespace_remaps(config, parse_namespaces("follower_left=puppet_left, follower_right=/puppet_right/")))
    assert remaps["/follower_left/joint_states"] == "/puppet_left/joint_states"
    assert remaps["/follower_right/commands/joint_group"] == "/puppet_right/commands/joint_group"
    assert remaps["/follower_right/commands/joint_single"] == "/puppet_right/commands/joint_single"
    assert not any(k.startswith("/cam_") for k in remaps)
    spec = build_graph(BringupOptions("aloha", namespaces={"follower_left": "puppet_left"})).process("policy_node")
    assert ("/follower_left/joint_states", "/puppet_left/joint_states") in spec.remappings
    joystick = build_graph(BringupOptions("aloha", joystick=True)).process("joystick_node")
    assert ("joy", "/joy") in joystick.remappings, "joystick_node publishes relative 'joy'; the config names the topic"


def test_launch_argument_strings_parse_and_bad_ones_are_named() -> None:
    options = BringupOptions.from_launch_arguments(
        "widowx", {"use_sim": "true", "record": "False", "joystick": "1", "checkpoint": "/c"})
    assert (options.use_sim, options.record, options.joystick, options.checkpoint) == (True, False, True, "/c")
    with pytest.raises(InvalidArgumentError, match="use_sim must be true or false"):
        BringupOptions.from_launch_arguments("aloha", {"use_sim": "maybe"})
    with pytest.raises(InvalidArgumentError, match="unknown launch arguments"):
        BringupOptions.from_launch_arguments("aloha", {"use_simm": "true"})
    with pytest.raises(InvalidArgumentError, match="unknown embodiment"):
        BringupOptions("spot")
    with pytest.raises(InvalidArgumentError, match="old=new"):
        parse_namespaces("follower_left")
    assert {"checkpoint", "backend", "use_sim", "record", "joystick", "config", "instruction", "multi_host",
            "security"} <= set(LAUNCH_ARGUMENTS)
    assert LAUNCH_ARGUMENTS["multi_host"][0] == "false" and LAUNCH_ARGUMENTS["security"][0] == ""


def test_node_parameters_reach_only_their_process_and_unknown_ones_are_refused() -> None:
    graph = build_graph(BringupOptions("aloha", use_sim=True, node_parameters={"sim_node": {"seed": 7}}))
    assert graph.process("sim_node").parameters["seed"] == 7
    assert "seed" not in graph.process("policy_node").parameters
    with pytest.raises(InvalidArgumentError, match="trial_recorder"):
        build_graph(BringupOptions("aloha", record=False, node_parameters={"trial_recorder": {"operator": "a"}}))


def test_a_config_without_sim_section_cannot_run_in_sim(tmp_path) -> None:
    from qwen_vla_ros.paths import config_dir

    data = yaml.safe_load((config_dir() / "widowx.yaml").read_text())
    del data["sim"]
    path = tmp_path / "lab_widowx.yaml"
    path.write_text(yaml.safe_dump(data))
    assert build_graph(BringupOptions("widowx", config=str(path))).process("policy_node").parameters["config"] == str(path)
    with pytest.raises(InvalidArgumentError, match="no sim section"):
        build_graph(BringupOptions("widowx", config=str(path), use_sim=True))


def test_up_is_single_host_without_security_unless_asked() -> None:
    from qwen_vla_ros.cli import build_parser

    default = build_parser().parse_args(["up", "aloha"])
    assert default.multi_host is False and default.security == ""
    chosen = build_parser().parse_args(["up", "aloha", "--multi-host", "--security", "/keys"])
    assert chosen.multi_host is True and chosen.security == "/keys"


def test_expert_command_source_replaces_the_policy_in_simulation_only() -> None:
    graph = build_graph(BringupOptions("aloha", use_sim=True, joystick=False, command_source="expert"))
    names = [p.name for p in graph.processes]
    assert "expert_node" in names and "policy_node" not in names
    assert graph.process("expert_node").module == "qwen_vla_ros.nodes.expert_node"
    with pytest.raises(InvalidArgumentError, match="simulation only"):
        BringupOptions("aloha", use_sim=False, command_source="expert")
    with pytest.raises(InvalidArgumentError, match="command_source"):
        BringupOptions("aloha", use_sim=True, command_source="teleop")


def test_configure_robot_reaches_only_a_real_robots_controller_and_is_off_by_default() -> None:
    """Nothing is written to the motors unless asked; in simulation there are no motors to write."""
    assert LAUNCH_ARGUMENTS["configure_robot"][0] == "false"
    assert "configure_robot" not in build_graph(BringupOptions("aloha")).process("aloha_controller").parameters
    asked = BringupOptions.from_launch_arguments("aloha", {"configure_robot": "true"})
    assert build_graph(asked).process("aloha_controller").parameters["configure_robot"] is True
    simulated = build_graph(BringupOptions("aloha", use_sim=True, configure_robot=True))
    assert "configure_robot" not in simulated.process("aloha_controller").parameters
