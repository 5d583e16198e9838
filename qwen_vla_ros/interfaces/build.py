"""Build the message packages of ``qwen_vla_ros/interfaces/`` into real ROS 2 Python types.

For machines that have neither the Interbotix workspace nor a ROS distribution: tests, CI
and the simulation. A robot computer uses the real package from its workspace instead.

The package.xml and CMakeLists.txt are generated into a temporary source folder and the
package is built with CMake directly (what colcon would run), against the ament and
rosidl CMake packages of the sourced distribution or of the PyPI ROS wheels in this
environment (the ``msg-build`` extra). Two fixes make the PyPI wheels usable:

- their exported CMake targets name the wheel build host's Python and numpy include
  folders, which do not exist here; the generated CMakeLists points any missing one at
  this interpreter's folders before generating;
- their libraries are found through ``LD_LIBRARY_PATH``, fixed at process start, so the
  built libraries get a relative RUNPATH and :meth:`BuiltInterfaces.activate` preloads them
  for use in an already running process.

Builds are cached by a hash of the inputs, under a file lock, so parallel test sessions
build once.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qwen_vla_ros.errors import QwenVlaError

INTERFACES_DIR = Path(__file__).resolve().parent
BUILD_RECIPE_VERSION = "2"  # bump when the generated files below change

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>{name}</name>
  <version>0.0.0</version>
  <description>{name} built by qwen_vla_ros from its public message definitions</description>
  <maintainer email="maintainers@qwen-vla-ros.dev">qwen_vla_ros maintainers</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
{depends}  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

CMAKE_LISTS = """cmake_minimum_required(VERSION 3.8)
project({name})
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
{find_depends}
rosidl_generate_interfaces(${{PROJECT_NAME}} {messages} {dependencies})
# Imported targets of PyPI ROS wheels carry include folders of the machine that built them. After the
# generation call: services import service_msgs' targets there.
get_property(_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(_target IN LISTS _imported)
  get_target_property(_dirs ${{_target}} INTERFACE_INCLUDE_DIRECTORIES)
  if(_dirs)
    set(_fixed)
    foreach(_dir IN LISTS _dirs)
      if(EXISTS "${{_dir}}" OR _dir MATCHES "^\\\\$<")
        list(APPEND _fixed "${{_dir}}")
      elseif(_dir MATCHES "numpy")
        list(APPEND _fixed ${{Python3_NumPy_INCLUDE_DIRS}})
      elseif(_dir MATCHES "include/python")
        list(APPEND _fixed ${{Python3_INCLUDE_DIRS}})
      endif()
    endforeach()
    set_target_properties(${{_target}} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${{_fixed}}")
  endif()
endforeach()
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""


class BuildUnavailable(QwenVlaError, RuntimeError):
    """The tools to build message packages are missing here; the message says what to install."""


class BuildFailed(QwenVlaError, RuntimeError):
    """The tools are there but the build failed; the message ends with the build log."""


@dataclass(frozen=True)
class BuiltInterfaces:
    package: str
    prefix: Path

    @property
    def library_path(self) -> Path:
        return self.prefix / "lib"

    @property
    def python_path(self) -> Path:
        (init,) = self.prefix.glob(f"**/{self.package}/__init__.py")
        return init.parent.parent

    @property
    def paths(self) -> dict[str, Path]:
        """Environment variables a process needs, and the folder to put in front of each."""
        return {"PYTHONPATH": self.python_path, "LD_LIBRARY_PATH": self.library_path, "AMENT_PREFIX_PATH": self.prefix}

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``env`` in which a child process imports and uses the built package."""
        result = dict(env)
        for key, folder in self.paths.items():
            result[key] = os.pathsep.join(filter(None, [str(folder), result.get(key)]))
        return result

    def activate(self) -> None:
        """Make the package usable in this process (imports and rclpy publishers)."""
        if str(self.python_path) not in sys.path:
            sys.path.insert(0, str(self.python_path))
        for library in sorted(self.library_path.glob("*.so")):
            # Preloaded so that rmw's dlopen by soname finds it (LD_LIBRARY_PATH is read at start
            # only). Not RTLD_GLOBAL: that would put ROS's rcutils/fastcdr ahead of the copies
            # librealsense vendors, and its recorder then segfaults in the same process.
            ctypes.CDLL(str(library))
        os.environ.update(self.environment(os.environ))
        importlib.invalidate_caches()


def message_files(package: str) -> list[Path]:
    """The package's messages (``msg/*.msg``), then its services (``srv/*.srv``)."""
    folder = INTERFACES_DIR / package
    files = sorted((folder / "msg").glob("*.msg")) + sorted((folder / "srv").glob("*.srv"))
    if not files:
        raise FileNotFoundError(f"no message or service definitions in {folder}")
    return files


def message_dependencies(files: list[Path]) -> list[str]:
    """Packages named by field types such as ``trajectory_msgs/JointTrajectory``."""
    found = set()
    for path in files:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Za-z_][\w]*)/\w+", line.split("#", 1)[0])
            if match:
                found.add(match.group(1))
    return sorted(found)


def ament_prefixes() -> list[str]:
    """The sourced distribution's prefixes, then this environment's (where PyPI ROS wheels install)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [*prefixes, *([sys.prefix] if sys.prefix not in prefixes else [])]


def missing_tools() -> list[str]:
    problems = []
    if shutil.which("cmake") is None:
        problems.append("cmake is not on PATH (apt install cmake)")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        problems.append("no C compiler (apt install build-essential)")
    try:
        importlib.import_module("catkin_pkg")
    except ImportError:
        problems.append("catkin_pkg is not importable (pip install '.[msg-build]')")
    include = sysconfig.get_paths().get("include", "")
    if not Path(include, "Python.h").is_file():
        problems.append(f"Python headers are missing ({include}/Python.h; apt install python3-dev)")
    for cmake_package in ("ament_cmake", "rosidl_default_generators"):
        if not any(Path(p, "share", cmake_package, "cmake").is_dir() for p in ament_prefixes()):
            problems.append(f"CMake package {cmake_package} not found in {ament_prefixes()} (pip install '.[msg-build]' "
                            "or source ROS 2)")
    return problems


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qwen_vla_ros" / "interfaces"


def _cache_key(package: str, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{BUILD_RECIPE_VERSION}|{sys.version}|{sys.prefix}|{package}".encode())
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _write_sources(package: str, files: list[Path], source: Path) -> None:
    dependencies = message_dependencies(files)
    for path in files:
        (source / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, source / path.parent.name / path.name)
    (source / "package.xml").write_text(
        PACKAGE_XML.format(name=package, depends="".join(f"  <depend>{d}</depend>\n" for d in dependencies))
    )
    (source / "CMakeLists.txt").write_text(
        CMAKE_LISTS.format(
            name=package,
            find_depends="\n".join(f"find_package({d} REQUIRED)" for d in dependencies),
            messages=" ".join(f'"{p.parent.name}/{p.name}"' for p in files),
            dependencies=f"DEPENDENCIES {' '.join(dependencies)}" if dependencies else "",
        )
    )


def _run(command: list[str], env: Mapping[str, str], log: list[str]) -> None:
    result = subprocess.run(command, env=dict(env), capture_output=True, text=True)
    log.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise BuildFailed(f"{' '.join(command[:2])} failed (exit {result.returncode}):\n" + "\n".join(log)[-4000:])


def build_interfaces(package: str = "interbotix_xs_msgs", cache_dir: Path | None = None) -> BuiltInterfaces:
    """Build (or reuse) ``package``; BuildUnavailable names missing tools, BuildFailed carries the log."""
    files = message_files(package)
    problems = missing_tools()
    if problems:
        raise BuildUnavailable(f"cannot build {package} here: " + "; ".join(problems))
    root = (cache_dir or default_cache_dir()) / f"{package}-{_cache_key(package, files)}"
    built = BuiltInterfaces(package, root / "install")
    done = root / "complete"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return built
        shutil.rmtree(built.prefix, ignore_errors=True)
        prefixes = os.pathsep.join(ament_prefixes())
        env = {**os.environ, "AMENT_PREFIX_PATH": prefixes, "CMAKE_PREFIX_PATH": prefixes}
        log: list[str] = []
        with tempfile.TemporaryDirectory(prefix=f"{package}-") as work:
            source, build = Path(work, "src"), Path(work, "build")
            _write_sources(package, files, source)
            _run(["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={built.prefix}",
                  "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
                  "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../../.."], env, log)
            _run(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2)], env, log)
            _run(["cmake", "--install", str(build)], env, log)
        done.write_text(package)
    return built


def _build_command(args: argparse.Namespace) -> int:
    try:
        built = build_interfaces(args.package, Path(args.cache) if args.cache else None)
    except (BuildUnavailable, BuildFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, folder in built.paths.items():
        print(f'export {key}="{folder}${{{key}:+{os.pathsep}${key}}}"')
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-interfaces",
        help="build interbotix_xs_msgs from the bundled definitions on a machine without it; prints shell exports",
    )
    parser.add_argument("--package", default="interbotix_xs_msgs",
                        help="bundled message package to build (%(default)s)")
    parser.add_argument("--cache", default="", help=f"build cache folder (default {default_cache_dir()})")
    parser.set_defaults(handler=_build_command)
