"""trial_recorder over real DDS: a recorder process records what an in-test node publishes,
labels trials through its services, survives SIGKILL, and rejects a bad protocol."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")

import rclpy  # noqa: E402
from helpers.trials import make_victim, plant_hostile_trials, tree
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qwen_vla_ros.chunk import ActionChunk  # noqa: E402
from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.model.fingerprint import checkpoint_fingerprint  # noqa: E402
from qwen_vla_ros.nodes.ros_contract import chunk_to_trajectory, image_to_msg  # noqa: E402
from qwen_vla_ros.recording.bag import read_messages  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
ALOHA = load_embodiment("aloha")
CAMERA = ALOHA.cameras[0].topic
LEFT_JOINTS = ALOHA.arms[0].joint_state_topic
CHATTER = "/test/chatter"


class Harness:
    """The in-test side: publishers, service clients and the recorder child process."""

    def __init__(self, ros_domain, tmp_path: Path) -> None:
        self.ros_domain = ros_domain
        self.node = rclpy.create_node("trial_test", context=ros_domain.context)
        self.executor = SingleThreadedExecutor(context=ros_domain.context)
        self.executor.add_node(self.node)
        self.announcements: list[dict] = []
        self.node.create_subscription(
            String, "/qwen_vla/trial/next_condition", lambda m: self.announcements.append(json.loads(m.data)), LATCHED
        )
        self.clients = {
            name: self.node.create_client(Trigger, f"/qwen_vla/trial/{name}")
            for name in ("start", "stop_success", "stop_failure", "abort")
        }
        self.output_dir = tmp_path / "trials"
        self.process: subprocess.Popen | None = None

    def start_recorder(self, *parameters: str) -> None:
        args = ["-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p", f"output_dir:={self.output_dir}",
                "-p", "discovery_period_s:=0.1", "-p", "flush_period_s:=0.2", "-p", f"topics:=['{CHATTER}']"]
        for parameter in parameters:
            args += ["-p", parameter]
        self.process = self.ros_domain.start_process(*args)
        self.output = []
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()
        self.wait_for_output("next trial:")
        assert self.clients["start"].wait_for_service(timeout_sec=10)
        self.spin(0.5)

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        """A killed recorder's services linger in DDS discovery, so readiness is read from the log."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"recorder never logged {text!r}:\n" + "".join(self.output))
            self.spin(0.05)

    def publisher(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        publisher = self.node.create_publisher(msg_type, topic, qos)
        subscribed = self.ros_domain.spin_until(self.executor, lambda: publisher.get_subscription_count() > 0, 20)
        assert subscribed, f"recorder never subscribed to {topic}"
        return publisher

    def call(self, service: str) -> Trigger.Response:
        future = self.clients[service].call_async(Trigger.Request())
        assert self.ros_domain.spin_until(self.executor, future.done, 30), f"{service} did not answer:\n" + "".join(self.output)
        return future.result()

    def spin(self, seconds: float) -> None:
        self.ros_domain.spin_until(self.executor, lambda: False, seconds)

    def stop_recorder(self, sig: signal.Signals = signal.SIGINT) -> str:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        time.sleep(0.2)  # the reader thread takes the last lines
        return "".join(self.output)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.node.destroy_node()


@pytest.fixture
def harness(ros_domain, tmp_path: Path):
    h = Harness(ros_domain, tmp_path)
    yield h
    h.close()


def _protocol(tmp_path: Path) -> Path:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump({
        "name": "lighting_ood",
        "instruction": "transfer the cube",
        "factors": [{"name": "lighting", "levels": ["bright", "dim"]}],
        "trials_per_condition": 1,
    }))
    return path


def _trial_yaml(output_dir: Path, trial_id: str) -> dict:
    return yaml.safe_load((output_dir / "trials" / trial_id / "trial.yaml").read_text())


def test_recorded_trial_matches_what_was_published(harness: Harness, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    harness.start_recorder(f"protocol:={_protocol(tmp_path)}", "operator:=alice",
                           f"runtime_overrides:=['checkpoint={checkpoint}']")
    mode = harness.publisher(String, "/qwen_vla/mode", LATCHED)
    mode.publish(String(data="policy"))
    camera = harness.publisher(Image, CAMERA)
    joints = harness.publisher(JointState, LEFT_JOINTS)
    chunks = harness.publisher(JointTrajectory, "/qwen_vla/action_chunk")
    instruction = harness.publisher(String, "/qwen_vla/instruction")
    assert harness.ros_domain.spin_until(harness.executor, lambda: harness.announcements, 10)
    assert harness.announcements[-1]["condition"] == {"lighting": "bright"}
    instruction.publish(String(data="pick up the red cube"))
    harness.spin(0.3)

    assert harness.call("start").success
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8) for _ in range(10)]
    positions = [rng.normal(size=9).tolist() for _ in range(30)]
    actions = [rng.normal(size=(5, 14)) for _ in range(4)]
    for i in range(30):
        joints.publish(JointState(name=[f"j{k}" for k in range(9)], position=positions[i]))
        if i % 3 == 0:
            camera.publish(image_to_msg(frames[i // 3], "rgb8", 1_000 + i, "cam_high"))
        if i % 8 == 0:
            chunk = ActionChunk(actions[i // 8], tuple(c.name for c in ALOHA.action.channels), 0.02, 5_000 + i)
            chunks.publish(chunk_to_trajectory(chunk))
        if i in (10, 20, 25):
            mode.publish(String(data={10: "teleop", 20: "policy", 25: "teleop"}[i]))
        harness.spin(0.02)
    harness.spin(0.5)
    stopped = harness.call("stop_success")
    assert stopped.success, stopped.message
    assert harness.ros_domain.spin_until(
        harness.executor, lambda: harness.announcements[-1]["condition"] == {"lighting": "dim"}, 10
    ), harness.announcements

    bag = harness.output_dir / "trials" / "trial_0001" / "bag"
    with Reader(bag) as reader:
        counts = {topic: info.msgcount for topic, info in reader.topics.items()}
    assert yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == 8, \
        "Humble's ros2 bag reads metadata version 8"
    assert counts[LEFT_JOINTS] == 30 and counts[CAMERA] == 10 and counts["/qwen_vla/action_chunk"] == 4
    assert counts["/qwen_vla/mode"] == 4, "the latched mode at the start plus three changes"
    assert "/qwen_vla/instruction" not in counts, "published before the trial, so not part of it"
    messages = list(read_messages(bag))
    got_positions = [list(m.position) for t, _, m in messages if t == LEFT_JOINTS]
    assert got_positions == positions
    got_frames = [m.data.reshape(m.height, m.width, 3) for t, _, m in messages if t == CAMERA]
    assert all(np.array_equal(a, b) for a, b in zip(got_frames, frames, strict=True))
    assert [m.header.stamp.nanosec for t, _, m in messages if t == CAMERA] == [1_000 + i for i in range(0, 30, 3)]
    got_chunks = [np.array([p.positions for p in m.points]) for t, _, m in messages if t == "/qwen_vla/action_chunk"]
    assert all(np.array_equal(a, b) for a, b in zip(got_chunks, actions, strict=True))
    assert [m.data for t, _, m in messages if t == "/qwen_vla/mode"] == ["policy", "teleop", "policy", "teleop"]

    record = _trial_yaml(harness.output_dir, "trial_0001")
    # every field of a finished trial is set; logs only where the bring-up keeps a log folder (log_dir), start_pose
    # only after a move to the start pose (no controller here)
    assert {k for k, v in record.items() if v is None} == {"logs", "start_pose"}, "every field of a finished trial is set"
    assert record["embodiment"] == "aloha" and record["robot"] == ALOHA.robot.model
    assert record["checkpoint"] == str(checkpoint) and record["checkpoint_sha256"] == checkpoint_fingerprint(checkpoint)
    assert record["backend"] == "torch" and record["operator"] == "alice"
    assert record["instruction"] == "pick up the red cube"
    assert record["condition"] == {"lighting": "bright"} and record["outcome"] == "success"
    assert [i["from_mode"] for i in record["interventions"]] == ["policy", "policy"]
    assert 0 < record["duration_s"] < 30 and record["end_ns"] > record["start_ns"]
    assert record["topics"][LEFT_JOINTS] == {"type": "sensor_msgs/msg/JointState", "messages": 30, "dropped": 0}
    silent_camera = ALOHA.cameras[1].topic  # in the recorded set, never published here
    assert record["topics"][silent_camera] == {"type": "sensor_msgs/msg/Image", "messages": 0, "dropped": 0}, \
        "a topic that stayed silent is on record with 0 messages"
    assert record["writer"] == "rosbags"
    index = yaml.safe_load((harness.output_dir / "index.yaml").read_text())
    assert [(t["id"], t["outcome"], t["interventions"]) for t in index["trials"]] == [("trial_0001", "success", 2)]

    assert not harness.call("stop_failure").success, "no trial is recording"
    output = harness.stop_recorder()
    assert "trial_0001 success" in output


def _stream_decode(mcap_file: Path) -> list[str]:
    """Read an MCAP that has no summary or footer front to back, as Foxglove does."""
    from mcap.exceptions import EndOfFile
    from mcap.reader import NonSeekingReader
    from mcap_ros2.decoder import DecoderFactory

    texts = []
    with mcap_file.open("rb") as stream:
        reader = NonSeekingReader(stream, decoder_factories=[DecoderFactory()])
        try:
            for _, _, _, message in reader.iter_decoded_messages(log_time_order=False):
                texts.append(message.data)
        except EndOfFile:
            pass
    return texts


def test_sigkill_mid_trial_leaves_a_readable_bag_marked_incomplete(harness: Harness) -> None:
    harness.start_recorder()
    chatter = harness.publisher(String, CHATTER)
    assert harness.call("start").success
    sent = [f"message {i}" for i in range(25)]
    for text in sent:
        chatter.publish(String(data=text))
        harness.spin(0.02)
    harness.spin(1.0)  # several flush periods: everything sent is on disk
    harness.stop_recorder(signal.SIGKILL)

    trial_dir = harness.output_dir / "trials" / "trial_0001"
    assert _trial_yaml(harness.output_dir, "trial_0001")["outcome"] is None
    assert not (trial_dir / "bag" / "metadata.yaml").exists(), "the writer never closed"
    assert _stream_decode(next((trial_dir / "bag").glob("*.mcap"))) == sent, \
        "the unclosed MCAP holds every message up to the last flush"

    harness.start_recorder()
    # Requests sent before the new server matches this client are lost; its subscribing to
    # our publisher shows discovery between the two has happened.
    harness.wait_for_output(f"recording {CHATTER}")
    harness.spin(0.5)
    record = _trial_yaml(harness.output_dir, "trial_0001")
    assert record["outcome"] == "incomplete"
    assert "recorder stopped before the trial ended" in record["notes"][0]
    assert record["topics"][CHATTER]["messages"] == len(sent)
    with Reader(trial_dir / "bag") as reader:
        assert reader.topics[CHATTER].msgcount == len(sent)
    assert [m.data for _, _, m in read_messages(trial_dir / "bag")] == sent
    assert harness.call("start").success, "the next trial starts normally"
    assert harness.call("abort").success
    index = yaml.safe_load((harness.output_dir / "index.yaml").read_text())
    assert [t["outcome"] for t in index["trials"]] == ["incomplete", "aborted"]


def test_startup_recovery_leaves_trials_pointing_outside_their_directory_alone(harness: Harness, tmp_path: Path) -> None:
    """The recorder's automatic recovery at start-up, on trial files edited to lead elsewhere
    (absolute, '..', symlinked bag, foreign id, symlinked trial directory)."""
    victim = make_victim(tmp_path / "victim")
    variants = plant_hostile_trials(harness.output_dir, victim)
    before = tree(victim)
    harness.start_recorder()
    output = harness.stop_recorder()
    assert tree(victim) == before, "nothing outside the trial directories was moved or deleted"
    assert "trial_0001 was interrupted and is marked incomplete" in output
    for trial_id, variant in variants.items():
        assert (f"{trial_id} is damaged and left alone" in output) == (variant != "sound"), (variant, output)


def test_bad_protocol_stops_the_node_with_a_clear_error(ros_domain, tmp_path: Path) -> None:
    protocol = tmp_path / "bad.yaml"
    protocol.write_text("name: broken\nfactors:\n  - name: lighting\n    levels: [dim, dim]\ntrials_per_condition: 0\n")
    process = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p", f"protocol:={protocol}",
        "-p", f"output_dir:={tmp_path / 'out'}",
    )
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2, output
    assert "factors[0].levels: level names must be unique, duplicated: ['dim']" in output
    assert "trials_per_condition: Input should be greater than or equal to 1 (got 0)" in output


def test_operator_sets_the_condition_and_the_sim_labels_success(harness: Harness, tmp_path: Path) -> None:
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from std_msgs.msg import Bool

    harness.start_recorder(f"protocol:={_protocol(tmp_path)}", "condition:=lighting=dim", "auto_label_success:=true")
    assert harness.ros_domain.spin_until(harness.executor, lambda: harness.announcements, 10)
    assert harness.announcements[-1]["source"] == "parameter" and harness.announcements[-1]["condition"] == {"lighting": "dim"}

    setter = harness.node.create_client(SetParameters, "/trial_recorder/set_parameters")

    def set_condition(text: str):
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=text)
        future = setter.call_async(SetParameters.Request(parameters=[ParameterMsg(name="condition", value=value)]))
        assert harness.ros_domain.spin_until(harness.executor, future.done, 20)
        return future.result().results[0]

    rejected = set_condition("lighting=dark")
    assert not rejected.successful and "no level 'dark'" in rejected.reason
    assert set_condition("").successful
    assert harness.ros_domain.spin_until(
        harness.executor, lambda: harness.announcements[-1].get("source") == "protocol", 10
    ), harness.announcements

    success = harness.publisher(Bool, "/qwen_vla/sim/success")
    assert harness.call("start").success
    success.publish(Bool(data=False))
    harness.spin(0.3)
    assert _trial_yaml(harness.output_dir, "trial_0001")["outcome"] is None
    success.publish(Bool(data=True))
    assert harness.ros_domain.spin_until(
        harness.executor, lambda: _trial_yaml(harness.output_dir, "trial_0001")["outcome"] == "success", 10
    )
    record = _trial_yaml(harness.output_dir, "trial_0001")
    assert record["condition"] == {"lighting": "bright"}
    assert "labelled success by /qwen_vla/sim/success" in record["notes"]
    assert record["topics"]["/qwen_vla/sim/success"]["messages"] == 2


def test_bad_condition_parameter_stops_the_node_with_a_clear_error(ros_domain, tmp_path: Path) -> None:
    process = ros_domain.start_process(
        "-m", "qwen_vla_ros.nodes.trial_recorder", "--ros-args", "-p", f"protocol:={_protocol(tmp_path)}",
        "-p", "condition:=weather=rain", "-p", f"output_dir:={tmp_path / 'out'}",
    )
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2, output
    assert "parameter condition" in output and "unknown factors ['weather']" in output
