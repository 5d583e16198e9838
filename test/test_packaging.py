"""The package installs both ways: a wheel for pip (bare machines) and ament_python metadata for colcon."""
from __future__ import annotations

import importlib
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

REQUIRED_DEPENDS = {
    "rclpy", "sensor_msgs", "trajectory_msgs", "geometry_msgs", "std_msgs", "std_srvs", "nav_msgs",
    "diagnostic_msgs", "python3-numpy", "python3-pydantic", "python3-opencv",
}


def test_package_xml_is_format_3_ament_python_with_real_dependencies() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "qwen_vla_ros"
    assert root.findtext("export/build_type") == "ament_python"
    depends = {e.text for e in root if e.tag in {"depend", "exec_depend"}}
    assert REQUIRED_DEPENDS <= depends, f"missing: {sorted(REQUIRED_DEPENDS - depends)}"


def test_setup_cfg_puts_executables_where_ros2_run_looks() -> None:
    text = (REPO / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/qwen_vla_ros" in text
    assert "script_dir=$base/lib/qwen_vla_ros" in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("qwen_vla_ros-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_share_files(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    data = "qwen_vla_ros-0.1.0.data/data/share/"
    expected = {data + "ament_index/resource_index/packages/qwen_vla_ros", data + "qwen_vla_ros/package.xml"}
    for folder in ("config", "urdf", "launch"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file():
                expected.add(data + "qwen_vla_ros/" + path.relative_to(REPO).as_posix())
    assert expected <= names, f"missing from wheel: {sorted(expected - names)}"


def test_every_console_entry_point_resolves(wheel: zipfile.ZipFile) -> None:
    (entry_file,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    lines = [line.strip() for line in wheel.read(entry_file).decode().splitlines()]
    scripts = [line for line in lines if "=" in line]
    assert any(line.startswith("qwen-vla-ros =") for line in scripts)
    for line in scripts:
        name, target = (part.strip() for part in line.split("=", 1))
        module, attribute = target.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name


def test_importing_the_package_pulls_in_neither_rclpy_nor_torch() -> None:
    code = "import sys, qwen_vla_ros, qwen_vla_ros.config; print('rclpy' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_installed_copy_imports_outside_the_checkout() -> None:
    """`pip install` then `python -c "import rclpy, qwen_vla_ros"`, from a directory without the source."""
    code = "import rclpy, qwen_vla_ros; print(qwen_vla_ros.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    if "No module named 'qwen_vla_ros'" in result.stderr:
        pytest.skip("qwen_vla_ros is not installed in this interpreter (running from the checkout only)")
    assert result.returncode == 0, result.stderr
    assert not result.stdout.strip().startswith(str(REPO / "qwen_vla_ros")), "imported the checkout, not an installed copy"


# package.xml's rosdep keys and the pip distributions they stand for
ROSDEP_PIP_NAMES = {"python3-numpy": "numpy", "python3-opencv": "opencv-python-headless", "python3-scipy": "scipy",
                    "python3-yaml": "pyyaml", "python3-h5py": "h5py", "python3-matplotlib": "matplotlib",
                    "python3-evdev": "evdev", "python3-pandas": "pandas",
                    "xacro": "xacro"}  # ROS xacro installs the Python module


def test_robot_computer_requirements_cover_what_rosdep_cannot_install(wheel: zipfile.ZipFile) -> None:
    """colcon installs no pip requirement: what package.xml's rosdep keys miss must be in the robot list.
    pydantic is listed although rosdep has python3-pydantic, because Ubuntu's is 1.x."""
    from packaging.requirements import Requirement

    (metadata,) = [n for n in wheel.namelist() if n.endswith("METADATA")]
    needed = set()
    for line in wheel.read(metadata).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            marker = str(requirement.marker or "")
            if not marker or any(f'extra == "{extra}"' in marker for extra in ("model", "recording", "onnx")):
                needed.add(requirement.name.lower().replace("_", "-"))
    root = ET.parse(REPO / "package.xml").getroot()
    from_rosdep = {ROSDEP_PIP_NAMES[e.text] for e in root if e.tag == "exec_depend" and e.text in ROSDEP_PIP_NAMES}
    listed = {Requirement(line).name.lower().replace("_", "-")
              for line in (REPO / "requirements" / "robot-computer.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    missing = needed - from_rosdep - listed
    assert not missing, f"a colcon install would lack {sorted(missing)}"
    assert "pydantic" in listed
