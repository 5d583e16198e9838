"""policy_node over real DDS with the tiny checkpoint: synthetic cameras and joint states in,
action chunks out. The node runs in this process (one torch import for the session) on a
SingleThreadedExecutor, as its main() does, beside a synthetic robot node; start-up failures run it as a process."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from helpers.synthetic_robot import SyntheticRobot  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.nodes.common import duration_to_seconds, time_to_ns  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERA_SIZE = (80, 60)
CONFIG_OVERRIDES = [f"cameras.{i}.{key}={value}" for i in range(4) for key, value in zip(("width", "height"), CAMERA_SIZE)]


@dataclass
class Received:
    stamp_ns: int
    actions: np.ndarray
    names: list[str]
    times: list[float]
    received_ns: int


@dataclass
class Harness:
    node: object
    robot: SyntheticRobot
    chunks: list[Received] = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)
    diagnostics: list[dict[str, str]] = field(default_factory=list)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last diagnostics: "
                             f"{self.diagnostics[-1] if self.diagnostics else None}")

    def chunks_after(self, stamp_ns: int) -> list[Received]:
        return [c for c in list(self.chunks) if c.stamp_ns > stamp_ns]

    def logged(self, level: int, *words: str) -> list[str]:
        return [m.msg for m in list(self.logs) if m.level >= level and all(w in m.msg for w in words)]

    def figure(self, key: str) -> str | None:
        return self.diagnostics[-1].get(key) if self.diagnostics else None


@pytest.fixture
def start_policy(ros_domain, tiny_checkpoint) -> Iterator[Callable[..., Harness]]:
    """start_policy(runtime_overrides=[...], committed=None, seed=-1) -> a running Harness."""
    import rclpy

    from qwen_vla_ros.nodes.policy_node import PolicyNode

    started: list[tuple] = []

    def start(runtime_overrides: list[str] = (), committed=None, seed: int = -1) -> Harness:
        config = load_embodiment("aloha", {k: int(v) for k, v in (o.split("=", 1) for o in CONFIG_OVERRIDES)})
        parameters = [
            Parameter("checkpoint", value=str(tiny_checkpoint)),
            Parameter("config_overrides", value=CONFIG_OVERRIDES),
            Parameter("runtime_overrides", value=["clock_check.heartbeat_hz=0", *runtime_overrides]),
            Parameter("seed", value=seed),
        ]
        node = PolicyNode(context=ros_domain.context, parameter_overrides=parameters)
        robot = SyntheticRobot(config, ros_domain.context, committed=committed)
        harness = Harness(node, robot)
        listener = rclpy.create_node("listener", context=ros_domain.context)
        listener.create_subscription(JointTrajectory, "/qwen_vla/action_chunk", lambda m: harness.chunks.append(Received(
            time_to_ns(m.header.stamp), np.array([p.positions for p in m.points]), list(m.joint_names),
            [duration_to_seconds(p.time_from_start) for p in m.points], robot.now_ns())), 10)
        rosout = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        listener.create_subscription(Log, "/rosout", harness.logs.append, rosout)
        listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: harness.diagnostics.extend(
            {v.key: v.value for v in s.values} for s in m.status if s.name.startswith("policy_node")), 10)
        executor = SingleThreadedExecutor(context=ros_domain.context)  # as policy_node's main() spins
        for each in (node, robot, listener):
            executor.add_node(each)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        started.append((node, [robot, listener], executor, thread))
        return harness

    yield start
    for node, others, executor, thread in started:
        node.close()
        executor.shutdown()
        thread.join(timeout=5)
        for each in (node, *others):
            each.destroy_node()


def test_chunks_follow_the_contract(start_policy) -> None:
    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=4"])
    config = harness.robot.config
    harness.wait(lambda: len(harness.chunks) >= 3, 60, "three chunks")
    oldest_stamps = {min(tick.values()) for tick in list(harness.robot.ticks) if len(tick) == 4}
    for chunk in harness.chunks[:3]:
        assert chunk.names == config.action.names
        assert chunk.actions.shape == (config.control.chunk_length, len(config.action.names))
        assert np.all(np.isfinite(chunk.actions))
        assert chunk.times == pytest.approx([k * config.control.action_dt for k in range(config.control.chunk_length)])
        assert chunk.stamp_ns in oldest_stamps, "the chunk stamp must be the oldest camera stamp of one tick"
    assert len({c.stamp_ns for c in harness.chunks}) == len(harness.chunks), "one chunk per observation"
    harness.wait(lambda: harness.figure("chunks") not in (None, "0"), 10, "diagnostics")
    assert harness.figure("prefix_builds") == "1"
    assert float(harness.figure("inference_ms_p50")) > 0


def test_instruction_change_rebuilds_the_prefix_once(start_policy) -> None:
    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=4"])
    harness.wait(lambda: len(harness.chunks) >= 1, 60, "a first chunk")
    for _ in range(3):  # the same new instruction, three times
        harness.robot.publish_instruction("stack the red block on the blue one")
        time.sleep(0.2)
    changed_ns = harness.robot.now_ns()
    harness.wait(lambda: harness.figure("instruction") == "stack the red block on the blue one", 30, "new instruction")
    harness.wait(lambda: len(harness.chunks_after(changed_ns)) >= 2, 30, "chunks after the change")
    time.sleep(1.5)
    assert harness.figure("prefix_builds") == "2"
    assert len(harness.logged(Log.INFO, "task prefix built", "stack the red block")) == 1

    # the 'instruction' parameter, set at run time (as `ros2 param set` does), is the other way in
    assert harness.node.set_parameters([Parameter("instruction", value="open the drawer")])[0].successful
    harness.wait(lambda: harness.figure("instruction") == "open the drawer", 30, "the parameter's instruction")
    time.sleep(1.5)
    assert harness.figure("prefix_builds") == "3"


def test_camera_stops_then_returns(start_policy) -> None:
    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=5", "sync.max_age_s=0.3"])
    harness.wait(lambda: len(harness.chunks) >= 1, 60, "a first chunk")
    harness.robot.enabled["cam_low"] = False
    stopped_ns = harness.robot.now_ns()
    harness.wait(lambda: harness.logged(Log.WARN, "cam_low", "no inference"), 20, "a warning naming cam_low")
    time.sleep(1.5)
    late = [c for c in harness.chunks if c.stamp_ns > stopped_ns]
    assert not late, f"{len(late)} chunks were computed from observations after cam_low stopped"
    assert int(harness.figure("skipped.camera_stale") or 0) > 0
    harness.robot.enabled["cam_low"] = True
    resumed_ns = harness.robot.now_ns()
    harness.wait(lambda: len(harness.chunks_after(resumed_ns)) >= 2, 30, "chunks after cam_low returned")


def test_encodings_and_sizes(start_policy) -> None:
    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=5", "rtc.enabled=false"], seed=7)
    robot = harness.robot
    harness.wait(lambda: len(harness.chunks) >= 1, 60, "a first chunk")
    reference = harness.chunks[-1].actions

    # bgr8 with the channels swapped is the same picture: the model must see the same RGB.
    robot.frames["cam_high"] = np.ascontiguousarray(robot.frames["cam_high"][:, :, ::-1])
    robot.encodings["cam_high"] = "bgr8"
    switched_ns = robot.now_ns()
    harness.wait(lambda: harness.chunks_after(switched_ns), 30, "a chunk from bgr8 frames")
    np.testing.assert_allclose(harness.chunks_after(switched_ns)[0].actions, reference, atol=1e-6)

    # The same bytes labelled rgb8 are another picture: the chunk changes (the test can fail).
    robot.encodings["cam_high"] = "rgb8"
    switched_ns = robot.now_ns()
    harness.wait(lambda: harness.chunks_after(switched_ns), 30, "a chunk from channel-swapped rgb8 frames")
    assert np.abs(harness.chunks_after(switched_ns)[0].actions - reference).max() > 1e-4

    # mono8 is rejected with an error naming the camera, and nothing is inferred.
    robot.frames["cam_high"] = np.zeros(robot.frames["cam_high"].shape[:2], np.uint8)
    robot.encodings["cam_high"] = "mono8"
    switched_ns = robot.now_ns()
    harness.wait(lambda: harness.logged(Log.ERROR, "cam_high", "mono8"), 20, "an error naming cam_high and mono8")
    time.sleep(1.5)
    assert not [c for c in harness.chunks if c.stamp_ns > switched_ns + 100_000_000]

    # Frames of another size are resized (with one warning) and inference goes on.
    robot.frames["cam_high"] = np.full((30, 40, 3), 128, np.uint8)
    robot.encodings["cam_high"] = "rgb8"
    switched_ns = robot.now_ns()
    harness.wait(lambda: harness.chunks_after(switched_ns), 30, "a chunk from 40x30 frames")
    assert harness.logged(Log.WARN, "cam_high", "40x30", "80x60")


def test_teleop_mode_stops_chunks_and_policy_mode_resumes(start_policy) -> None:
    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=5", "schedule.keep_warm_s=0.3"])
    harness.wait(lambda: len(harness.chunks) >= 1, 60, "a first chunk")
    harness.robot.publish_mode("teleop")
    harness.wait(lambda: harness.figure("mode") == "teleop", 20, "teleop mode")
    time.sleep(0.5)  # an inference already running is discarded, not published
    count = len(harness.chunks)
    time.sleep(2.0)
    assert len(harness.chunks) == count, "chunks were published in teleop mode"
    harness.wait(lambda: int(harness.figure("warmups") or 0) >= 2, 20, "warm-up inferences in teleop")
    harness.robot.publish_mode("policy")
    returned_ns = harness.robot.now_ns()
    harness.wait(lambda: harness.chunks_after(returned_ns), 20, "a fresh chunk back in policy mode")


def test_rtc_chunk_continues_the_committed_actions(start_policy) -> None:
    """The controller's committed plan is a ramp in time; the chunk's first delay_steps
    actions, due at the observation stamp + k * dt, must equal the ramp there."""
    config = load_embodiment("aloha")
    start = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
    velocity = np.linspace(-0.2, 0.2, len(start))  # robot units per second
    t0 = time.time_ns()

    def ramp(t_ns: int) -> np.ndarray:
        return start + velocity * ((t_ns - t0) / 1e9 % 5.0)

    harness = start_policy(["schedule.trigger=rate", "schedule.replan_hz=3"], committed=ramp)
    dt = config.control.action_dt

    def matched() -> bool:
        stamp, delay = int(harness.figure("last_chunk_stamp_ns") or -1), int(harness.figure("last_delay_steps") or 0)
        chunk = next((c for c in list(harness.chunks) if c.stamp_ns == stamp), None)
        if chunk is None or delay < 1:
            return False
        expected = np.array([ramp(stamp + round(k * dt * 1e9)) for k in range(delay)])
        # skip the rare chunk whose window wraps the ramp's 5 s period
        if np.abs(np.diff(expected, axis=0)).max(initial=0.0) > 0.1:
            return False
        np.testing.assert_allclose(chunk.actions[:delay], expected, atol=1e-4)
        assert np.abs(chunk.actions[delay + 1:] - [ramp(stamp + round(k * dt * 1e9))
                                                   for k in range(delay + 1, len(chunk.actions))]).max() > 1e-3
        return True

    harness.wait(matched, 90, "a chunk whose first delay_steps actions continue the committed ramp")
    assert int(harness.figure("rtc_chunks")) >= 1


@pytest.mark.parametrize("problem", ["missing", "broken"])
def test_bad_checkpoint_exits_2(ros_domain, tmp_path, problem: str) -> None:
    checkpoint = tmp_path / "checkpoint"
    if problem == "broken":
        checkpoint.mkdir()
        (checkpoint / "qwen_vla.json").write_text("{not json")
    child = ros_domain.start_process("-m", "qwen_vla_ros.nodes.policy_node", "--ros-args", "-p", f"checkpoint:={checkpoint}")
    output = child.communicate(timeout=120)[0]
    assert child.returncode == 2, output
    assert str(checkpoint) in output and "error" in output


def test_load_policy_for_reports_bad_input_and_lets_a_bug_through(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """A checkpoint or option the package judged bad becomes a ConfigError (exit 2); a programming
    error inside loading (a bare KeyError, once caught as a bad checkpoint) keeps its own type and traceback instead of being reported as a bad
    checkpoint. The loader is replaced to raise each: no real bug exists to trigger, and a bad
    option that passes the runtime config's own validation needs a machine without CUDA."""
    from qwen_vla_ros.config import ConfigError, load_runtime
    from qwen_vla_ros.errors import InvalidArgumentError
    from qwen_vla_ros.model import loading
    from qwen_vla_ros.nodes.policy_node import load_policy_for

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "qwen_vla.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_policy_for(str(broken), load_runtime(None, {}))

    def loader_raising(error: Exception) -> Callable[[object], None]:
        def load(config: object) -> None:
            raise error
        return load

    monkeypatch.setattr(loading, "load_policy_from_config", loader_raising(InvalidArgumentError("dtype must be one of")))
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_policy_for(str(tiny_checkpoint), load_runtime(None, {}))
    monkeypatch.setattr(loading, "load_policy_from_config", loader_raising(KeyError("vision_config")))
    with pytest.raises(KeyError, match="vision_config"):
        load_policy_for(str(tiny_checkpoint), load_runtime(None, {}))


def test_an_embodiment_the_checkpoint_lacks_is_a_config_error_and_a_bug_is_not(ros_domain, tiny_checkpoint,
                                                                               monkeypatch) -> None:
    """The node's start-up refuses an embodiment the checkpoint was not trained for as a ConfigError
    (exit 2 in run_node); a bug while building the prefix (a bare KeyError, planted on the real
    policy's set_task because no real one exists) keeps its type and traceback."""
    from qwen_vla_ros.config import ConfigError
    from qwen_vla_ros.model import load_policy
    from qwen_vla_ros.nodes import policy_node

    parameters = [Parameter("checkpoint", value=str(tiny_checkpoint)),
                  Parameter("config_overrides", value=[*CONFIG_OVERRIDES, "name=aloha_custom"])]
    with pytest.raises(ConfigError, match="'aloha_custom' is not in this checkpoint"):
        policy_node.PolicyNode(context=ros_domain.context, parameter_overrides=parameters)

    policy = load_policy(tiny_checkpoint)

    def set_task_with_a_bug(*args: object) -> None:
        raise KeyError("prefix_state")

    monkeypatch.setattr(policy, "set_task", set_task_with_a_bug)
    monkeypatch.setattr(policy_node, "load_policy_for", lambda checkpoint, runtime: policy)
    with pytest.raises(KeyError, match="prefix_state"):
        policy_node.PolicyNode(context=ros_domain.context, parameter_overrides=parameters[:1])
