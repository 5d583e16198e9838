"""Building message packages from qwen_vla_ros/interfaces: generated sources, missing tools, the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

from qwen_vla_ros.cli import main as cli_main
from qwen_vla_ros.interfaces import build


def test_dependencies_are_read_from_field_types() -> None:
    files = build.message_files("interbotix_xs_msgs")
    assert [f.name for f in files] == ["JointGroupCommand.msg", "JointSingleCommand.msg", "JointTrajectoryCommand.msg",
                                       "OperatingModes.srv", "RegisterValues.srv", "RobotInfo.srv", "TorqueEnable.srv"]
    assert build.message_dependencies(files) == ["trajectory_msgs"]


def test_generated_package_is_valid_for_catkin_pkg(tmp_path: Path) -> None:
    catkin = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg is not installed (pip install '.[msg-build]')")
    files = build.message_files("interbotix_xs_msgs")
    build._write_sources("interbotix_xs_msgs", files, tmp_path / "src")
    package = catkin.parse_package(str(tmp_path / "src" / "package.xml"))
    assert package.name == "interbotix_xs_msgs"
    assert [d.name for d in package.build_depends] == ["trajectory_msgs"]
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    cmake = (tmp_path / "src" / "CMakeLists.txt").read_text()
    assert '"msg/JointGroupCommand.msg"' in cmake and "DEPENDENCIES trajectory_msgs" in cmake
    assert '"srv/RobotInfo.srv"' in cmake
    copied = sorted(p.name for folder in ("msg", "srv") for p in (tmp_path / "src" / folder).iterdir())
    assert copied == sorted(f.name for f in files)


def test_missing_tools_are_named_not_hidden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    with pytest.raises(build.BuildUnavailable, match="cmake is not on PATH"):
        build.build_interfaces("interbotix_xs_msgs", cache_dir=tmp_path)
    assert cli_main(["build-interfaces", "--cache", str(tmp_path)]) == 2


def test_cli_prints_exports_for_a_built_package(interbotix_msgs, capsys: pytest.CaptureFixture[str]) -> None:
    if interbotix_msgs.built is None:
        pytest.skip("interbotix_xs_msgs is installed here, so the bundled copy is not built")
    cache = interbotix_msgs.built.prefix.parent.parent  # the fixture's build cache: <cache>/<package>-<key>/install
    assert cli_main(["build-interfaces", "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("=")[0] for line in lines] == ["export PYTHONPATH", "export LD_LIBRARY_PATH", "export AMENT_PREFIX_PATH"]
    assert str(interbotix_msgs.built.python_path) in lines[0]
