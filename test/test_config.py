"""Config validation: every shipped file passes; each kind of broken file fails with exit 2 and a
message that names the field path and the bad value."""
from __future__ import annotations

import ast
import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_vla_ros.cli import main as cli_main
from qwen_vla_ros.config import EMBODIMENTS, ConfigError, load_embodiment, load_runtime
from qwen_vla_ros.config.loader import read_yaml
from qwen_vla_ros.control.layout import CommandLayout
from qwen_vla_ros.paths import config_dir

SHIPPED = sorted(p.name for p in config_dir().glob("*.yaml"))
PROTOCOLS = sorted(config_dir().glob("protocols/*.yaml"))


def test_every_embodiment_has_a_shipped_file() -> None:
    assert sorted(f"{name}.yaml" for name in EMBODIMENTS) == sorted(set(SHIPPED) - {"runtime.yaml"})


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_passes_check_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(config_dir() / name)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert len(out.splitlines()) <= 40, "summary must fit one screen"


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.name)
def test_shipped_protocols_pass_check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK (Protocol)" in out and "conditions x" in out


def test_broken_protocol_is_rejected_by_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = read_yaml(PROTOCOLS[0])
    data["trials_per_condition"] = 0
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "trials_per_condition" in err and "0" in err


def test_check_config_command_line_entry() -> None:
    """The real command line, in a child process, as a user would run it."""
    files = [str(config_dir() / n) for n in SHIPPED]
    result = subprocess.run([sys.executable, "-m", "qwen_vla_ros.cli", "check-config", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == len(files)


def _aloha() -> dict[str, Any]:
    return read_yaml(config_dir() / "aloha.yaml")


def _del(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _swap_limits(data: dict[str, Any]) -> None:
    data["action"]["channels"][2]["limits"] = {"lower": 1.5, "upper": -1.5, "velocity": 3.0, "acceleration": 20.0}


BROKEN = {
    "missing field": (_del(["control", "rate_hz"]), ["control.rate_hz", "missing"]),
    "wrong type": (_set(["control", "rate_hz"], "fifty"), ["control.rate_hz", "'fifty'"]),
    "lower above upper": (_swap_limits, ["action.channels[2].limits", "lower (1.5) must be below upper (-1.5)"]),
    "mask count": (_set(["action", "mask"], list(range(13))), ["action.mask", "13 entries", "14 action channels"]),
    "unknown adapter": (_set(["outputs", 0, "adapter"], "dynamixel"), ["outputs[0]", "'dynamixel'", "interbotix"]),
    "unknown field": (_set(["control", "rate"], 50), ["control.rate", "unknown field"]),
    "mask outside padded space": (_set(["action", "padded_dim"], 8), ["action.mask", "outside the padded space"]),
    "normalisation length": (
        _set(["normalization", "action", "mean"], [0.0] * 3),
        ["normalization.action", "mean has 3 values but std has 14"],
    ),
    "channel without driver": (
        _set(["arms", 1, "gripper", "channel"], None),
        ["right_gripper", "driven by no arm"],
    ),
    "state reads unknown arm": (
        _set(["state", "channels", 0, "source", "arm"], "middle"),
        ["left_waist", "unknown arm 'middle'"],
    ),
    "button bound twice": (_set(["teleop", "buttons", "estop"], 4), ["teleop.buttons", "deadman", "estop"]),
    "jog axes per joint": (
        _set(["teleop", "arm", "joint_axes"], [0, 1, 4]),
        ["teleop.arm.joint_axes has 3 entries", "'left': 6"],
    ),
    "three cartesian axes": (_set(["teleop", "arm", "linear_axes"], [1, 0]), ["teleop.arm.linear_axes", "at least 3"]),
    "teleop base without a base": (
        _set(["teleop", "base"], {"axis_linear": 5, "axis_angular": 8, "scale_linear": 0.5, "scale_angular": 0.5}),
        ["teleop.base is set but the embodiment has no base"],
    ),
    "axis shared by base and arm": (
        _set(["teleop", "base"], {"axis_linear": 1, "axis_angular": 5, "scale_linear": 0.5, "scale_angular": 0.5}),
        ["teleop", "joy axes [1] are read by both the base and the arm jog"],
    ),
    "axis button on a jog axis": (
        _set(["teleop", "buttons", "jog_mode"], {"axis": 1, "threshold": 0.5}),
        ["teleop", "joy axes [1] are read by both the arm jog and buttons"],
    ),
    "axis button without a side": (
        _set(["teleop", "buttons", "jog_mode"], {"axis": 2, "threshold": 0.0}),
        ["teleop.buttons.jog_mode", "threshold must be non-zero"],
    ),
    "trigger bound twice": (
        _set(["teleop", "buttons", "arm_select"], {"axis": 2, "threshold": -0.9}),
        ["teleop.buttons", "'axis 2-': ['arm_select', 'jog_mode']"],
    ),
    "gripper buttons without arm jog": (_del(["teleop", "arm"]), ["gripper_open", "need a teleop.arm section"]),
    "leader without gripper constants": (
        lambda data: data["teleop"]["leader_follow"].update(enabled=True, gripper_open=None),
        ["teleop.leader_follow", "needs gripper_open and gripper_close"],
    ),
    "leader for an unknown arm": (
        lambda data: data["teleop"]["leader_follow"].update(enabled=True, topics={"middle": "/leader/joint_states"}),
        ["teleop.leader_follow names unknown arms ['middle']"],
    ),
    "negative std": (_set(["normalization", "state", "std", 0], -1.0), ["std must be > 0", "-1.0"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_config_is_rejected_with_field_and_value(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, expected = BROKEN[kind]
    data = copy.deepcopy(_aloha())
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} missing from:\n{err}"


def test_unreadable_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert cli_main(["check-config", str(bad_yaml), str(scalar), str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err
    assert "top level must be a mapping" in err
    assert "file does not exist" in err


def test_overrides_apply_dotted_keys_and_are_validated() -> None:
    config = load_embodiment("aloha", {"control.rate_hz": 100, "arms.0.namespace": "puppet_left"})
    assert config.control.rate_hz == 100
    assert config.arms[0].namespace == "puppet_left"
    with pytest.raises(ConfigError, match="control.rate_hz"):
        load_embodiment("aloha", {"control.rate_hz": -1})


def test_runtime_rejects_tensorrt_on_cpu() -> None:
    with pytest.raises(ConfigError, match="tensorrt"):
        load_runtime(None, {"backend": "tensorrt", "device": "cpu"})


def test_study_tools_are_off_by_default_and_bounded() -> None:
    """The added delay holds chunks back, so it is 0 unless asked for, and never beyond the
    chunk age the ALOHA safety section allows (read from its YAML), where it could only be refused."""
    import yaml

    from qwen_vla_ros.paths import config_dir

    runtime = load_runtime()
    assert runtime.study.added_delay_s == 0.0 and runtime.execution == "asynchronous"
    assert runtime.rtc.guidance_limit == "min(beta,K)"
    max_age_s = yaml.safe_load((config_dir() / "aloha.yaml").read_text())["safety"]["max_chunk_age_s"]
    assert load_runtime(None, {"study.added_delay_s": max_age_s}).study.added_delay_s == max_age_s
    for bad in (-0.1, max_age_s + 0.1):
        with pytest.raises(ConfigError, match="study.added_delay_s"):
            load_runtime(None, {"study.added_delay_s": bad})
    with pytest.raises(ConfigError, match="rtc.guidance_limit"):
        load_runtime(None, {"rtc.guidance_limit": "K"})


def test_shared_anchor_limits_are_equal_for_both_arms() -> None:
    """YAML anchors keep the two ALOHA arms' limits identical; a wrong anchor would show here."""
    config = load_embodiment("aloha")
    left, right = config.arm("left"), config.arm("right")
    assert [j.limits for j in left.joints] == [j.limits for j in right.joints]
    assert left.gripper is not None and right.gripper is not None
    assert (left.gripper.channel, right.gripper.channel) == ("left_gripper", "right_gripper")


def test_reference_gripper_constants_are_in_config() -> None:
    """The Interbotix follower gripper constants from robots.md live in config, not code."""
    gripper = load_embodiment("aloha").arm("left").gripper
    assert gripper is not None
    assert (gripper.joint_open, gripper.joint_close) == (1.6214, 0.6197)
    assert (gripper.finger_open, gripper.finger_close) == (0.0579, 0.0440)


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_commands_are_actions_where_no_arm_takes_deltas_and_no_base_takes_waypoints(name: str) -> None:
    """Judged from the YAML itself: an ee_delta arm or a waypoint base commands something other than its actions."""
    data = yaml.safe_load((config_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
    deltas = any("ee_delta" in arm for arm in data.get("arms", []))
    translated = deltas or (data.get("base") or {}).get("mode") == "waypoints"
    config = load_embodiment(name)
    assert config.commands_are_actions is not translated
    assert config.commands_are_actions == (CommandLayout(config).names == tuple(config.action.names))


def test_config_imports_no_higher_layer() -> None:
    """config sits at the bottom (docs/architecture.md): it may import itself, paths and the error base class
    (errors.py, which imports nothing), nothing else of ours, not even lazily inside a function."""
    package = Path(__file__).resolve().parent.parent / "qwen_vla_ros"
    for path in sorted((package / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                if module.startswith("qwen_vla_ros"):
                    assert module.split(".")[1] in {"config", "paths", "errors"}, f"{path.name} imports {module}"
