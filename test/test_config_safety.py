"""Configs that would quietly switch safety off are refused: exit code 2 and the field path.

Every case starts from a shipped YAML file read here with plain PyYAML (not the product's
loader), changes one value and runs the real ``check-config``; the URDF cases take the
URDF's limits from the xacro expanded here with xacro and read with ``xml.dom``, so the
expected numbers never come from the code under test.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_vla_ros.cli import main as cli_main
from qwen_vla_ros.config import ConfigError, load_embodiment, load_runtime
from qwen_vla_ros.paths import config_dir, urdf_dir

xacro = pytest.importorskip("xacro", reason="xacro is not installed (pip install xacro)")


def shipped(name: str) -> dict[str, Any]:
    """The shipped file as plain data, every YAML alias turned into its own copy."""
    data = yaml.safe_load((config_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
    return json.loads(json.dumps(data))


def urdf_limit(filename: str, joint: str) -> dict[str, float]:
    """The <limit> attributes of one URDF joint, read from the expanded xacro."""
    document = xacro.process_file(str(urdf_dir() / filename))
    for element in document.getElementsByTagName("joint"):
        if element.getAttribute("name") == joint:
            limit = element.getElementsByTagName("limit")[0]
            keys = ("lower", "upper", "velocity")
            return {key: float(limit.getAttribute(key)) for key in keys if limit.getAttribute(key)}
    raise AssertionError(f"{filename} has no joint {joint}")


def check_config(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Run check-config, assert it refused with exit 2 and no traceback; return stderr."""
    assert cli_main(["check-config", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "unsafe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Mutation = Callable[[dict[str, Any]], None]


def _at(path: list[Any], value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _drop(path: list[Any]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _shoulder_beyond_urdf(data: dict[str, Any]) -> None:
    """Left shoulder's upper limit 0.1 rad past the URDF's, action channel widened with it."""
    upper = urdf_limit("aloha.urdf.xacro", "left/shoulder")["upper"] + 0.1
    data["arms"][0]["joints"][1]["limits"]["upper"] = upper
    data["action"]["channels"][1]["limits"]["upper"] = upper


def _waist_faster_than_urdf(data: dict[str, Any]) -> None:
    velocity = 2 * urdf_limit("aloha.urdf.xacro", "right/waist")["velocity"]
    data["arms"][1]["joints"][0]["limits"]["velocity"] = velocity
    data["action"]["channels"][7]["limits"]["velocity"] = velocity


def _widowx_wrist_below_urdf(data: dict[str, Any]) -> None:
    data["arms"][0]["joints"][4]["limits"]["lower"] = urdf_limit("wx250s.urdf.xacro", "wrist_angle")["lower"] - 0.05


def _channel_wider_than_its_joint(data: dict[str, Any]) -> None:
    data["action"]["channels"][1]["limits"]["upper"] = data["arms"][0]["joints"][1]["limits"]["upper"] + 0.1


UNSAFE_EMBODIMENTS: dict[str, tuple[str, Mutation, list[str]]] = {
    "action channel wider than its joint": (
        "aloha", _channel_wider_than_its_joint, ["action.channels[1].limits", "arms[0].joints[1].limits"]),
    "joint without velocity": (
        "aloha", _drop(["arms", 0, "joints", 1, "limits", "velocity"]), ["arms[0].joints[1].limits", "velocity"]),
    "joint without acceleration": (
        "widowx", _drop(["arms", 0, "joints", 2, "limits", "acceleration"]),
        ["arms[0].joints[2].limits", "acceleration"]),
    "gripper motor without acceleration": (
        "aloha", _drop(["arms", 1, "gripper", "limits", "acceleration"]), ["arms[1].gripper.limits", "acceleration"]),
    "infinite joint velocity": (
        "aloha", _at(["arms", 0, "joints", 0, "limits", "velocity"], math.inf),
        ["arms[0].joints[0].limits.velocity", "finite"]),
    "infinite channel acceleration": (
        "aloha", _at(["action", "channels", 3, "limits", "acceleration"], math.inf),
        ["action.channels[3].limits.acceleration", "finite"]),
    "nan position limit": (
        "widowx", _at(["arms", 0, "joints", 0, "limits", "lower"], math.nan),
        ["arms[0].joints[0].limits.lower", "finite"]),
    "infinite base speed": ("mobile_base", _at(["base", "max_linear"], math.inf), ["base.max_linear", "finite"]),
    "infinite joint-state timeout": (
        "aloha", _at(["safety", "joint_state_timeout_s"], math.inf), ["safety.joint_state_timeout_s", "finite"]),
    "nan stamp tolerance": (
        "aloha", _at(["safety", "future_stamp_tolerance_s"], math.nan), ["safety.future_stamp_tolerance_s", "finite"]),
    "infinite joy timeout": ("aloha", _at(["teleop", "joy_timeout_s"], math.inf), ["teleop.joy_timeout_s", "finite"]),
    "infinite IK tolerance": (
        "widowx", _at(["arms", 0, "ee_delta", "ik_position_tolerance_m"], math.inf),
        ["arms[0].ee_delta.ik_position_tolerance_m", "finite"]),
    "infinite control rate": ("aloha", _at(["control", "rate_hz"], math.inf), ["control.rate_hz", "finite"]),
    "zero control rate": ("aloha", _at(["control", "rate_hz"], 0), ["control.rate_hz", "greater than 0"]),
    "absurd control rate": ("aloha", _at(["control", "rate_hz"], 50_000), ["control.rate_hz", "10000"]),
    "absurd camera rate": ("aloha", _at(["cameras", 0, "fps"], 1e6), ["cameras[0].fps", "10000"]),
    "absurd action rate": ("aloha", _at(["control", "action_dt"], 1e-7), ["control.action_dt", "0.0001"]),
    "absurd sim camera rate": ("aloha", _at(["sim", "camera_rate_hz"], 1e5), ["sim.camera_rate_hz", "10000"]),
    "joint beyond its URDF upper limit": (
        "aloha", _shoulder_beyond_urdf, ["arms[0].joints[1].limits.upper", "left/shoulder", "URDF"]),
    "joint faster than its URDF": (
        "aloha", _waist_faster_than_urdf, ["arms[1].joints[0].limits.velocity", "right/waist"]),
    "widowx joint below its URDF lower limit": (
        "widowx", _widowx_wrist_below_urdf, ["arms[0].joints[4].limits.lower", "wrist_angle"]),
    "joint the URDF does not have": (
        "aloha", _at(["arms", 0, "urdf_prefix"], "middle/"), ["arms[0].joints[0]", "'middle/waist'"]),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_EMBODIMENTS))
def test_unsafe_embodiment_is_refused_with_its_field_path(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, mutate, expected = UNSAFE_EMBODIMENTS[kind]
    data = shipped(name)
    mutate(data)
    err = check_config(write(tmp_path, data), capsys)
    for fragment in expected:
        assert fragment in err, f"{fragment!r} missing from:\n{err}"


UNSAFE_RUNTIME: dict[str, tuple[Mutation, list[str]]] = {
    "infinite observation age": (_at(["sync", "max_age_s"], math.inf), ["sync.max_age_s", "finite"]),
    "nan clock offset tolerance": (
        _at(["clock_check", "max_offset_s"], math.nan), ["clock_check.max_offset_s", "finite"]),
    "infinite remaining threshold": (
        _at(["schedule", "remaining_threshold_s"], math.inf), ["schedule.remaining_threshold_s", "finite"]),
    "absurd replanning rate": (_at(["schedule", "replan_hz"], 1e5), ["schedule.replan_hz", "10000"]),
    "zero replanning rate": (_at(["schedule", "replan_hz"], 0.0), ["schedule.replan_hz", "greater than 0"]),
    "absurd heartbeat rate": (_at(["clock_check", "heartbeat_hz"], 1e9), ["clock_check.heartbeat_hz", "10000"]),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_RUNTIME))
def test_unsafe_runtime_is_refused_with_its_field_path(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, expected = UNSAFE_RUNTIME[kind]
    data = shipped("runtime")
    mutate(data)
    err = check_config(write(tmp_path, data), capsys)
    for fragment in expected:
        assert fragment in err, f"{fragment!r} missing from:\n{err}"


def test_end_effector_delta_channels_may_leave_rates_to_the_joints() -> None:
    """WidowX's delta channels carry no velocity bound in its YAML; its joints do, and it loads."""
    data = shipped("widowx")
    deltas = data["arms"][0]["ee_delta"]["channels"]
    delta_limits = [c["limits"] for c in data["action"]["channels"] if c["name"] in deltas]
    assert delta_limits and all("velocity" not in limits for limits in delta_limits)
    assert all({"velocity", "acceleration"} <= set(j["limits"]) for j in data["arms"][0]["joints"])
    load_embodiment("widowx")


def test_shipped_joint_limits_lie_inside_the_urdf_the_loader_reads() -> None:
    """The check is not vacuous: the URDF's shoulder limit read here is the one a wider config trips."""
    upper = urdf_limit("aloha.urdf.xacro", "left/shoulder")["upper"]
    assert shipped("aloha")["arms"][0]["joints"][1]["limits"]["upper"] <= upper
    with pytest.raises(ConfigError, match=r"arms\[0\]\.joints\[1\]\.limits\.upper"):
        load_embodiment("aloha", {"arms.0.joints.1.limits.upper": upper + 1e-3,
                                  "action.channels.1.limits.upper": upper + 1e-3})


BAD_OVERRIDES = {
    "list index that does not exist": ("arms.5.namespace=x", ["arms.5.namespace", "2 entries", "index 5"]),
    "list index that is not a number": ("arms.left.namespace=x", ["arms.left.namespace", "not an index"]),
    "field that does not exist": ("control.rate=100", ["control.rate", "not a field"]),
    "section that does not exist": ("controls.rate_hz.x=1", ["controls.rate_hz.x", "controls is not a field"]),
    "field below a value": ("control.rate_hz.max=1", ["control.rate_hz.max", "single value"]),
    "non-finite value": ("control.rate_hz=.inf", ["control.rate_hz", "finite"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_OVERRIDES))
def test_bad_override_is_one_line_naming_it(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    override, expected = BAD_OVERRIDES[kind]
    err = check_config(config_dir() / "aloha.yaml", capsys, "--override", override)
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, err
    for fragment in expected:
        assert fragment in problems[0], f"{fragment!r} missing from:\n{err}"


def test_override_changes_only_its_own_path_not_every_alias_of_an_anchor() -> None:
    """aloha.yaml shares one anchor for both arms' waists and both waist channels."""
    config = load_embodiment("aloha", {"arms.0.joints.0.limits.acceleration": 10.0,
                                       "action.channels.0.limits.acceleration": 10.0})
    assert config.arms[0].joints[0].limits.acceleration == config.action.channels[0].limits.acceleration == 10.0
    data = shipped("aloha")
    right_waist = data["arms"][1]["joints"][0]["limits"]["acceleration"]
    assert config.arms[1].joints[0].limits.acceleration == right_waist != 10.0
    assert config.action.channels[7].limits.acceleration == data["action"]["channels"][7]["limits"]["acceleration"]


def test_runtime_override_names_a_missing_field() -> None:
    with pytest.raises(ConfigError, match="override rtc.horizon: rtc.horizon is not a field"):
        load_runtime(None, {"rtc.horizon": 3})


def billion_laughs(levels: int = 10, fan_out: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * fan_out) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"name: *a{levels - 1}", ""])


def test_billion_laughs_is_refused_fast_in_bounded_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """10 aliases deep x 10 wide is 10**10 strings once expanded: refused in well under a second."""
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = check_config(path, capsys)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert "expands to more than" in err and "aliases" in err
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_billion_laughs_in_an_override_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    bomb = "[" + ", ".join(["&a [" + ", ".join(["x"] * 10) + "]"] + ["*a"] * 9) + "]"
    nested = "{l0: &b0 " + bomb + ", " + ", ".join(f"l{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]"
                                                   for i in range(1, 8)) + "}"
    assert cli_main(["check-config", str(config_dir() / "aloha.yaml"), "--override", f"prompt={nested}"]) == 2
    assert "expands to more than" in capsys.readouterr().err


def test_recursive_alias_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: &loop [1, *loop]\n")
    assert "recursive" in check_config(path, capsys)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deeply_nested_document_is_refused_fast(style: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """50 000 nested lists crashed libyaml's composer (C stack) and took PyYAML's 12 s to refuse."""
    depth = 50_000 if style == "flow" else 400
    text = "[" * depth + "]" * depth if style == "flow" else "\n" + "".join("  " * i + "-\n" for i in range(1, depth))
    path = tmp_path / "deep.yaml"
    path.write_text(f"name: {text}\n")
    started = time.perf_counter()
    err = check_config(path, capsys)
    assert "nests deeper than" in err
    assert time.perf_counter() - started < 1.0


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("prompt: '" + "x" * (2 << 20) + "'\n")
    assert "at most" in check_config(path, capsys)


def test_huge_bad_value_is_reported_in_a_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 90 000-element list where a number belongs: the message quotes a few elements, not all."""
    data = shipped("aloha")
    data["control"]["rate_hz"] = list(range(90_000))
    err = check_config(write(tmp_path, data), capsys)
    line = next(line for line in err.splitlines() if "control.rate_hz" in line)
    assert len(line) < 300, line


def test_check_config_refusal_from_the_command_line(tmp_path: Path) -> None:
    """The real command, in a child process: exit 2, the field path, no traceback."""
    data = shipped("aloha")
    data["arms"][0]["joints"][1]["limits"]["velocity"] = math.inf
    path = write(tmp_path, data)
    result = subprocess.run([sys.executable, "-m", "qwen_vla_ros.cli", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "arms[0].joints[1].limits.velocity" in result.stderr and "Traceback" not in result.stderr


NODE_OVERRIDES = {
    "missing list index": ("arms.5.namespace=x", "arms.5.namespace"),
    "infinite rate": ("control.rate_hz=.inf", "control.rate_hz"),
    "joint beyond the URDF": ("arms.0.joints.2.limits.upper=3.0", "arms[0].joints[2].limits.upper"),
}


@pytest.mark.parametrize("kind", sorted(NODE_OVERRIDES))
def test_controller_node_refuses_an_unsafe_override(kind: str, ros_domain) -> None:
    """The real controller node, as a process: exit 2 with the field path, and a clean teardown."""
    override, fragment = NODE_OVERRIDES[kind]
    forward = "outputs=[{adapter: forward_command, arms: [left, right]}]"
    child = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.controller", "--ros-args", "-p", "config:=aloha",
        "-p", f"config_overrides:=['{forward}', '{override}']",
    )
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 2, output
    assert fragment in output and "Traceback" not in output and "AttributeError" not in output, output


@pytest.mark.parametrize("module", ["policy_node", "sim_node", "camera_node", "trial_recorder"])
def test_every_config_loading_node_refuses_a_bad_override(module: str, ros_domain, tmp_path: Path) -> None:
    """Each node that loads the embodiment exits 2 naming the override, before touching anything else."""
    env = dict(ros_domain.env, HOME=str(tmp_path))
    child = ros_domain.start_process(
        "-m", f"qwen_vla_ros.nodes.{module}", "--ros-args", "-p", "config:=aloha",
        "-p", "config_overrides:=['cameras.9.fps=30']", env=env,
    )
    output = child.communicate(timeout=90)[0]
    assert child.returncode == 2, output
    assert "cameras.9.fps" in output and "Traceback" not in output, output
