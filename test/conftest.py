"""Shared fixtures: an isolated ROS domain per test, and helpers to spin real rclpy nodes."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_domains = itertools.count()
REAL_HOME = Path.home()


def _user_interfaces_cache() -> Path:
    """The message build cache of the real home, read before the tests get a home of their own."""
    from qwen_vla_ros.interfaces.build import default_cache_dir

    return default_cache_dir()


INTERFACES_CACHE = _user_interfaces_cache()


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never write into the user's home: for the whole session HOME and the XDG
    directories point at a temporary folder, which child processes inherit (their defaults
    such as the recorder's ``~/qwen_vla_trials``, ``~/.cache/qwen_vla_ros`` and ROS's
    ``~/.ros/log`` land there). The one exception is the interbotix message build, which
    takes minutes: the ``interbotix_msgs`` fixture passes the user's build cache explicitly
    (INTERFACES_CACHE), as a developer's own earlier build is what it reuses."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        for variable, folder in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                                 ("XDG_DATA_HOME", ".local/share"), ("ROS_HOME", ".ros")):
            patch.setenv(variable, str(home / folder))
        patch.delenv("ROS_LOG_DIR", raising=False)
        yield home


def _clean_zombie_shared_memory() -> None:
    """Remove the Fast DDS shared-memory segments that no live process holds.

    Every DDS participant maps a 32 MiB segment in /dev/shm (config/fastdds_shm.xml); a
    process that dies without shutting DDS down (the tests SIGKILL nodes on purpose, and a
    timeout kills them too) leaves its segment behind, and /dev/shm is RAM. Left to pile up
    across runs on one machine they filled its 24 GB and the kernel killed pytest. Fast DDS's
    own ``fastdds shm clean`` removes only segments whose owner is gone, so a robot or another
    test run on the same machine is untouched. It runs with this interpreter because the
    ``fastdds`` launcher calls whatever ``python3`` is first on PATH, which may lack psutil."""
    launcher = shutil.which("fastdds", path=str(Path(sys.executable).parent)) or shutil.which("fastdds")
    tool = Path(launcher).resolve().parent.parent / "tools" / "fastdds" / "fastdds.py" if launcher else None
    if tool is None or not tool.is_file():
        print("fastdds tool not found: zombie Fast DDS shared-memory segments are not cleaned", file=sys.stderr)
        return
    done = subprocess.run([sys.executable, str(tool), "shm", "clean"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        print(f"fastdds shm clean failed: {done.stdout}{done.stderr}", file=sys.stderr)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_shared_memory() -> Iterator[None]:
    """Start and end every session with no orphaned DDS segments (_clean_zombie_shared_memory)."""
    _clean_zombie_shared_memory()
    yield
    _clean_zombie_shared_memory()


def _next_domain_id() -> int:
    """Distinct per test and per pytest process, inside FastDDS's valid range (0..232)."""
    return 1 + (os.getpid() * 31 + next(_domains)) % 200


@dataclass
class RosDomain:
    """A private DDS domain: an rclpy context for in-test nodes and an env for child processes."""

    domain_id: int
    context: object
    env: dict[str, str]

    def spin_until(self, executor, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return predicate()

    def start_process(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Run ``python args...`` in this domain with the shipped DDS profile (``env`` replaces the domain's)."""
        return subprocess.Popen(
            [sys.executable, *args], env=env or self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, **kwargs,
        )

    @staticmethod
    def stop_process(child: subprocess.Popen) -> str:
        """SIGTERM (a clean shutdown), SIGKILL if that hangs; the child's output."""
        child.terminate()
        try:
            return child.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            child.kill()
            return child.communicate()[0]


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> Iterator[RosDomain]:
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
    from qwen_vla_ros.ros_env import DDS_PROFILE_ENV, with_dds_profile

    domain_id = _next_domain_id()
    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", DDS_PROFILE_ENV):
        monkeypatch.setenv(key, env[key])
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        yield RosDomain(domain_id, context, env)
    finally:
        context.try_shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One randomly initialised ``tiny`` checkpoint per test session, written by the real builder."""
    pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
    pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
    from qwen_vla_ros.model.build import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("checkpoints") / "tiny")


@pytest.fixture
def make_images() -> Callable[..., dict]:
    """Random uint8 RGB frames for the given camera names: make_images(names, seed, height, width)."""
    import numpy as np

    def make(names, seed: int = 0, height: int = 48, width: int = 80) -> dict:
        rng = np.random.default_rng(seed)
        return {name: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for name in names}

    return make


@dataclass
class MessageTypes:
    """Where non-PyPI message types come from: installed (None) or built from qwen_vla_ros/interfaces."""

    built: object | None

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return self.built.environment(env) if self.built is not None else dict(env)


@pytest.fixture(scope="session")
def interbotix_msgs() -> MessageTypes:
    """Real interbotix_xs_msgs Python types, importable in this process and in child processes.

    On a robot computer the installed package is used. Elsewhere the package is built once
    from the bundled .msg files (cached across sessions, see qwen_vla_ros.interfaces.build).
    """
    pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
    import importlib

    from qwen_vla_ros.interfaces.build import BuildUnavailable, build_interfaces

    try:
        importlib.import_module("interbotix_xs_msgs.msg")
        return MessageTypes(None)
    except ImportError:
        pass
    try:
        built = build_interfaces("interbotix_xs_msgs", cache_dir=INTERFACES_CACHE)
    except BuildUnavailable as exc:
        pytest.skip(f"interbotix_xs_msgs is not installed and cannot be built here: {exc}")
    built.activate()
    return MessageTypes(built)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported once per session through the real ``qwen-vla-ros export`` command."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install '.[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's dynamo exporter) is not installed: pip install '.[onnx]'")
    from qwen_vla_ros.cli import main as cli_main

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    assert cli_main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return out
