"""The node graph of each embodiment, as data: which processes run, with which parameters.

The ``ros2 launch`` files (``launch/*.launch.py``) and the ``qwen-vla-ros up`` runner both
turn this description into processes, so a robot computer and a bare machine start the same
graph. No ROS import here: the graph is decided (and tested) without rclpy or launch.

Topic names follow the Interbotix ALOHA bringup: follower arms under ``follower_left`` and
``follower_right``, leader arms under ``leader_left`` and ``leader_right``, cameras under
``cam_*``. The embodiment config names every topic absolutely, so the nodes run in the root
namespace (one controller serves both arms); ``namespaces`` remaps a whole driver namespace
(e.g. the older ``follower_left=puppet_left``) for every node.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwen_vla_ros.config import EMBODIMENTS, load_embodiment, parse_override
from qwen_vla_ros.config.embodiment import EmbodimentConfig
from qwen_vla_ros.config.hardware import InterbotixOutput
from qwen_vla_ros.contract import JOYSTICK_OUTPUT, config_topics
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.ros_env import (
    MULTI_HOST_ENV,
    enclave_name,
    missing_enclaves,
    security_environment,
)

PACKAGE = "qwen_vla_ros"
RMW_ENV = "RMW_IMPLEMENTATION"
RMW = "rmw_fastrtps_cpp"  # the shipped profiles are FastDDS profiles

# Launch arguments of every launch file and their defaults, as launch strings.
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "checkpoint": ("", "checkpoint directory (empty: the runtime config's)"),
    "backend": ("", "torch | onnxruntime | tensorrt (empty: the runtime config's)"),
    "use_sim": ("false", "simulate the robot and cameras (sim_node) instead of camera_node and the drivers"),
    "record": ("true", "start the trial recorder (it records only while a trial runs)"),
    "joystick": ("true", "start joystick_node (a gamepad or foot pedal read through evdev; false when joy_node runs instead)"),
    "config": ("", "embodiment config name or YAML file (empty: the launch file's embodiment)"),
    "instruction": ("", "task instruction (empty: the runtime config's)"),
    "runtime_config": ("", "runtime YAML file (empty: the shipped runtime.yaml)"),
    "output_dir": ("", "where the recorder writes trials (empty: ~/qwen_vla_trials)"),
    "namespaces": ("", "driver namespace remaps, e.g. follower_left=puppet_left,follower_right=puppet_right"),
    "multi_host": ("false", ("let DDS reach other machines (UDP on every interface); false keeps it on this host "
                             "(shared memory and loopback); see docs/security.md for what true exposes")),
    "security": ("", ("SROS2 keystore directory: every node runs enforced in enclave /qwen_vla/<node> "
                      "(empty: no DDS security); see docs/security.md")),
    "configure_robot": ("false", ("before the Interbotix preflight, write each follower's operating modes and "
                                  "gripper current limit (false: nothing is written to the motors); see "
                                  "docs/operation.md")),
}

CONTROLLERS = {  # embodiment -> console script; all are qwen_vla_ros.nodes.controller with `config` set
    "aloha": "aloha_controller",
    "aloha_mobile": "aloha_controller",
    "widowx": "widowx_controller",
    "mobile_base": "base_controller",
}


@dataclass(frozen=True)
class BringupOptions:
    """What a user chooses when bringing an embodiment up (the launch arguments, typed)."""

    embodiment: str
    checkpoint: str = ""
    backend: str = ""
    use_sim: bool = False
    record: bool = True
    joystick: bool = True
    config: str = ""
    instruction: str = ""
    runtime_config: str = ""
    output_dir: str = ""
    namespaces: Mapping[str, str] = field(default_factory=dict)
    multi_host: bool = False
    security: str = ""  # SROS2 keystore; empty: no DDS security
    configure_robot: bool = False  # the controller writes the Interbotix modes before its preflight
    config_overrides: Sequence[str] = ()
    runtime_overrides: Sequence[str] = ()
    node_parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # process name -> extra parameters
    command_source: str = "policy"  # policy | expert: the scripted demonstrator in the policy's place (collect)

    def __post_init__(self) -> None:
        if self.embodiment not in EMBODIMENTS:
            raise InvalidArgumentError(f"unknown embodiment {self.embodiment!r}; choose one of {', '.join(EMBODIMENTS)}")
        if self.command_source not in ("policy", "expert"):
            raise InvalidArgumentError(f"command_source must be 'policy' or 'expert', got {self.command_source!r}")
        if self.command_source == "expert" and not self.use_sim:
            raise InvalidArgumentError("the scripted expert plays in simulation only (use_sim)")

    @classmethod
    def from_launch_arguments(cls, embodiment: str, values: Mapping[str, str]) -> BringupOptions:
        """Options from launch-argument strings (``use_sim:=true``); unknown names are an error."""
        unknown = sorted(set(values) - set(LAUNCH_ARGUMENTS))
        if unknown:
            raise InvalidArgumentError(f"unknown launch arguments {unknown}; known: {sorted(LAUNCH_ARGUMENTS)}")
        text = {name: values.get(name, default) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
        return cls(
            embodiment, text["checkpoint"], text["backend"], config=text["config"], instruction=text["instruction"],
            runtime_config=text["runtime_config"], output_dir=text["output_dir"],
            namespaces=parse_namespaces(text["namespaces"]), security=text["security"].strip(),
            use_sim=parse_bool("use_sim", text["use_sim"]), record=parse_bool("record", text["record"]),
            joystick=parse_bool("joystick", text["joystick"]), multi_host=parse_bool("multi_host", text["multi_host"]),
            configure_robot=parse_bool("configure_robot", text["configure_robot"]),
        )


@dataclass(frozen=True)
class ProcessSpec:
    """One node process: a console script for ``ros2 launch``, a module for ``python -m``.

    Another package's node (a camera driver) has no module: ``up`` runs its executable from
    the sourced ROS installation where there is one.
    """

    name: str
    executable: str
    module: str
    parameters: dict[str, Any]
    namespace: str = ""
    remappings: tuple[tuple[str, str], ...] = ()
    environment: dict[str, str] = field(default_factory=dict)  # defaults: a variable already set wins
    # Always set, whatever the inherited environment says: the DDS mode (each process then
    # resolves its profile with ros_env.dds_environment) and the SROS2 choice.
    required_environment: dict[str, str] = field(default_factory=dict)
    enclave: str = ""  # SROS2 enclave (--enclave), set when security is on
    required: bool = True
    package: str = PACKAGE
    node_name: str = ""  # the ROS node name when it differs from the process name (a driver's 'camera')

    @property
    def ros_name(self) -> str:
        return self.node_name or self.name

    def ros_arguments(self, params_file: str) -> list[str]:
        """``--ros-args`` for ``python -m module``: node name, namespace, parameters file, remaps."""
        args = ["--ros-args", "-r", f"__node:={self.ros_name}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        args += ["--params-file", params_file]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args + self.security_arguments()

    def security_arguments(self) -> list[str]:
        """The ``--ros-args`` that put the node in its enclave (none without security)."""
        return ["--enclave", self.enclave] if self.enclave else []

    def parameters_yaml(self) -> dict[str, Any]:
        """The ROS 2 parameters-file content for this process (applies to any node name)."""
        return {"/**": {"ros__parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class Graph:
    embodiment: EmbodimentConfig
    processes: tuple[ProcessSpec, ...]
    environment: dict[str, str]  # for every process; a variable already set wins
    required_environment: dict[str, str] = field(default_factory=dict)  # for every process, always

    def process(self, name: str) -> ProcessSpec:
        for spec in self.processes:
            if spec.name == name:
                return spec
        raise KeyError(f"no process {name!r} in the graph; have {[p.name for p in self.processes]}")


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise InvalidArgumentError(f"{name} must be true or false, got {text!r}")


def parse_namespaces(text: str) -> dict[str, str]:
    """``follower_left=puppet_left,follower_right=puppet_right`` -> mapping."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, target = item.partition("=")
        if not sep or not source.strip("/ ") or not target.strip("/ "):
            raise InvalidArgumentError(f"namespace remap must look like old=new, got {item!r}")
        mapping[source.strip("/ ")] = target.strip("/ ")
    return mapping


def graph_environment() -> dict[str, str]:
    """The RMW the shipped FastDDS profiles are written for (a variable already set wins)."""
    return {RMW_ENV: RMW}


def required_environment(options: BringupOptions) -> dict[str, str]:
    """What every process runs with whatever the user's shell says: the DDS mode and SROS2.

    The mode travels as one variable; each process (ours through ``run_node``, the runner and
    launch for every child) turns it into a profile and discovery range with
    ``ros_env.dds_environment``, so a node started by hand resolves it the same way.
    """
    environment = {MULTI_HOST_ENV: str(options.multi_host).lower()}
    if options.security:
        environment |= security_environment(options.security)
    return environment


def check_keystore(keystore: str, processes: Sequence[ProcessSpec], embodiment: str) -> None:
    """Refuse to start when the keystore lacks a process's enclave, naming them and the fix."""
    missing = missing_enclaves(keystore, [p.enclave for p in processes if p.enclave])
    if missing:
        raise InvalidArgumentError(
            f"security: keystore {keystore} has no enclave for {', '.join(missing)}; create them with "
            f"'qwen-vla-ros security policy --embodiment {embodiment} -o policy.xml' and "
            f"'ros2 security generate_artifacts -k {keystore} -p policy.xml' (docs/security.md)"
        )


def sim_overrides(config: EmbodimentConfig) -> list[str]:
    """Config overrides every node gets in simulation.

    The Interbotix messages do not exist on a bare machine, so the controller commands the sim
    (and the recorder records) ``forward_command`` instead; the cameras are declared at the
    sim's render size, so the policy gets frames of the size it expects.
    """
    overrides = []
    if any(isinstance(o, InterbotixOutput) for o in config.outputs):
        outputs = [
            {"adapter": "forward_command", "arms": list(o.arms)} if isinstance(o, InterbotixOutput)
            else o.model_dump(mode="json")
            for o in config.outputs
        ]
        overrides.append(f"outputs={json.dumps(outputs)}")
    if config.sim is not None:
        mapped = getattr(config.sim, "camera_map", None)  # MuJoCo renders mapped cameras, mock sims all
        for index, camera in enumerate(config.cameras):
            if mapped is None or camera.name in mapped:
                overrides += [f"cameras.{index}.width={config.sim.render_width}",
                              f"cameras.{index}.height={config.sim.render_height}"]
    return overrides


def namespace_remaps(config: EmbodimentConfig, namespaces: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Remap each config topic under ``/<old>/`` to ``/<new>/`` (e.g. ALOHA's older puppet names)."""
    remaps = []
    for topic in dict.fromkeys(topic.name for topic in config_topics(config)):
        for old, new in namespaces.items():
            if topic.startswith(f"/{old}/"):
                remaps.append((topic, f"/{new}/{topic[len(old) + 2:]}"))
    return tuple(remaps)


def _string(value: str) -> str:
    """A YAML-safe override value (instructions may contain ':' or '#')."""
    return json.dumps(value)


def build_graph(options: BringupOptions) -> Graph:
    """The processes that bring ``options.embodiment`` up, in start order."""
    config_source = options.config or options.embodiment
    config = load_embodiment(config_source, _parsed(options.config_overrides))
    if options.use_sim and config.sim is None:
        raise InvalidArgumentError(f"{config_source} has no sim section, so it cannot run with use_sim")
    config_overrides = (sim_overrides(config) if options.use_sim else []) + list(options.config_overrides)
    runtime_overrides = list(options.runtime_overrides)
    if options.checkpoint:
        runtime_overrides.append(f"checkpoint={_string(options.checkpoint)}")
    if options.backend:
        runtime_overrides.append(f"backend={_string(options.backend)}")
    if options.instruction:
        runtime_overrides.append(f"instruction={_string(options.instruction)}")

    common: dict[str, Any] = {"config": config_source}
    if options.runtime_config:
        common["runtime_config"] = options.runtime_config
    if config_overrides:  # an empty list has no type in a parameters file
        common["config_overrides"] = config_overrides
    if runtime_overrides:
        common["runtime_overrides"] = runtime_overrides
    remaps = namespace_remaps(config, options.namespaces)
    base_env = graph_environment()
    forced_env = required_environment(options)

    def spec(name: str, executable: str, module: str, extra: Mapping[str, Any] | None = None, *,
             required: bool = True, environment: Mapping[str, str] | None = None,
             more_remaps: tuple[tuple[str, str], ...] = ()) -> ProcessSpec:
        parameters = {**common, **(extra or {}), **options.node_parameters.get(name, {})}
        return ProcessSpec(name, executable, f"{PACKAGE}.nodes.{module}", parameters, remappings=remaps + more_remaps,
                           environment={**base_env, **(environment or {})}, required=required,
                           required_environment=dict(forced_env),
                           enclave=enclave_name(name) if options.security else "")

    processes = []
    if options.use_sim:
        processes.append(spec("sim_node", "sim_node", "sim_node", environment={"MUJOCO_GL": "egl"}))
    else:
        if any(camera.source.type != "topic" for camera in config.cameras):
            processes.append(spec("camera_node", "camera_node", "camera_node"))
        processes.extend(realsense_drivers(config, base_env, forced_env, secure=bool(options.security)))
    if options.record:
        recorder = {"output_dir": options.output_dir} if options.output_dir else {}
        processes.append(spec("trial_recorder", "trial_recorder", "trial_recorder", recorder))
    if options.command_source == "expert":
        processes.append(spec("expert_node", "expert_node", "expert_node"))
    else:
        processes.append(spec("policy_node", "policy_node", "policy_node"))
    processes.append(spec(CONTROLLERS[options.embodiment], CONTROLLERS[options.embodiment], "controller",
                          {"configure_robot": True} if options.configure_robot and not options.use_sim else None))
    if options.joystick:  # a missing gamepad is retried, so it never takes the graph down
        processes.append(spec("joystick_node", "joystick_node", "joystick_node", required=False,
                              more_remaps=((JOYSTICK_OUTPUT, config.teleop.joy_topic),)))
    unknown = set(options.node_parameters) - {p.name for p in processes}
    if unknown:
        raise InvalidArgumentError(f"parameters given for processes not in the graph: {sorted(unknown)}")
    if options.security:
        check_keystore(options.security, processes, options.embodiment)
    return Graph(config, tuple(processes), base_env, forced_env)


def realsense_drivers(config: EmbodimentConfig, environment: Mapping[str, str],
                      required: Mapping[str, str] | None = None, *, secure: bool = False) -> list[ProcessSpec]:
    """One ``realsense2_camera_node`` per camera taken from its topic with that driver.

    As in the Interbotix ALOHA bringup, the driver runs as node ``camera`` in the camera's
    namespace (``/cam_high/camera/...``); its colour image is remapped onto the configured
    topic. Serials get realsense2_camera's ``_`` prefix, which keeps ROS from reading them as
    numbers. Not required: a camera that fails is reported and the policy waits for frames.
    """
    drivers = []
    for camera in config.cameras:
        source = camera.source
        if source.type != "topic" or source.driver != "realsense2_camera":
            continue
        image = f"/{camera.name}/camera/color/image_raw"
        parameters: dict[str, Any] = {
            "camera_name": "camera",
            "enable_color": True,
            "enable_depth": False,
            "rgb_camera.color_profile": f"{camera.width}x{camera.height}x{camera.fps:g}",
            "rgb_camera.color_format": camera.encoding.upper(),
        }
        if source.serial:
            parameters["serial_no"] = f"_{source.serial}"
        remaps = ((image, camera.topic),) if camera.topic != image else ()
        name = f"{camera.name}_driver"
        drivers.append(ProcessSpec(
            name, "realsense2_camera_node", "", parameters, namespace=camera.name,
            remappings=remaps, environment=dict(environment), required=False, package="realsense2_camera",
            node_name="camera", required_environment=dict(required or {}), enclave=enclave_name(name) if secure else "",
        ))
    return drivers


def _parsed(overrides: Sequence[str]) -> dict[str, Any]:
    return dict(parse_override(text) for text in overrides)
