"""``qwen-vla-ros up aloha --sim`` over real DDS: the graph comes up, deaths are reported,
Ctrl-C leaves no process behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


class Runner:
    """The ``up`` command as a child, its output collected line by line."""

    def __init__(self, ros_domain, *args: str) -> None:
        self.process = ros_domain.start_process("-m", "qwen_vla_ros.cli", "up", *args)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"started (\w+) \(pid (\d+)\)", self.text())}

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return True
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = 40.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self.reader.join(timeout=5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_brings_the_sim_graph_up_reports_a_death_and_stops_everything_on_ctrl_c(ros_domain, tiny_checkpoint) -> None:
    runner = Runner(ros_domain, "aloha", "--sim", "--no-record", "--checkpoint", str(tiny_checkpoint))
    node = rclpy.create_node("up_probe", context=ros_domain.context)
    executor = SingleThreadedExecutor(context=ros_domain.context)
    executor.add_node(node)
    chunks = []
    node.create_subscription(JointTrajectory, "/qwen_vla/action_chunk", chunks.append, 10)
    try:
        assert runner.wait_for("started joystick_node", 30), runner.text()
        pids = runner.pids()
        assert set(pids) == {"sim_node", "policy_node", "aloha_controller", "joystick_node"}
        assert ros_domain.spin_until(executor, lambda: len(chunks) >= 2, 120), f"no chunks:\n{runner.text()[-3000:]}"

        os.kill(pids["joystick_node"], signal.SIGKILL)  # not required: reported, the graph goes on
        assert runner.wait_for(r"process joystick_node \(pid \d+\) died: killed by SIGKILL", 10), runner.text()[-2000:]
        before = len(chunks)
        assert ros_domain.spin_until(executor, lambda: len(chunks) > before + 1, 30), "chunks stopped after the death"
        assert runner.process.poll() is None

        runner.process.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
        code = runner.finish()
        assert code == 0, runner.text()[-3000:]
        assert "all processes stopped" in runner.text()
        assert not [name for name, pid in pids.items() if alive(pid)]
    finally:
        if runner.process.poll() is None:
            runner.process.kill()
        node.destroy_node()


def test_up_exits_nonzero_when_a_required_process_dies(ros_domain, tiny_checkpoint) -> None:
    runner = Runner(ros_domain, "aloha", "--sim", "--checkpoint", str(tiny_checkpoint))
    try:
        assert runner.wait_for("started aloha_controller", 30), runner.text()
        pids = runner.pids()
        assert runner.wait_for(r"\[aloha_controller\].*command channels", 60), runner.text()[-2000:]
        os.kill(pids["aloha_controller"], signal.SIGKILL)
        code = runner.finish(60)
        assert code == 1
        text = runner.text()
        assert re.search(r"required process aloha_controller \(pid \d+\) died: killed by SIGKILL", text), text[-2000:]
        assert "last" in text and "lines of its output" in text and "command channels" in text
        assert not [name for name, pid in pids.items() if alive(pid)]
    finally:
        if runner.process.poll() is None:
            runner.process.kill()
