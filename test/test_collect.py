"""``qwen-vla-ros collect`` end to end: the scripted expert as a command source of the real graph.

Real processes over real DDS (sim_node in MuJoCo, expert_node, the ALOHA controller and
trial_recorder, started by the runner in this test's ROS domain); the trials are judged from
their bags, read back with rosbags, and from the trial records the recorder wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")
pytest.importorskip("gym_aloha", reason="gym-aloha (the MJCF assets) is not installed: pip install '.[sim]'")
pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")

from rosbags.highlevel import AnyReader  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "config" / "protocols" / "aloha_ood.yaml"
ALOHA_YAML = REPO / "config" / "aloha.yaml"


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from qwen_vla_ros.ros_env import with_dds_profile

    output = tmp_path_factory.mktemp("collect")
    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(100 + os.getpid() % 50), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               HOME=str(tmp_path_factory.mktemp("home")),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "qwen_vla_ros.cli", "collect", "--episodes", "2", "--protocol", str(PROTOCOL),
         "--output", str(output), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, f"collect failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return output, json.loads(result.stdout.strip().splitlines()[-1])


def read_bag(bag: Path) -> dict[str, list]:
    topics: dict[str, list] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages():
            topics.setdefault(connection.topic, []).append(reader.deserialize(raw, connection.msgtype))
    return topics


def test_each_episode_is_one_trial_labelled_by_the_sim(collected) -> None:
    output, summary = collected
    assert summary["episodes"] == 2 and summary["problems"] == []
    index = yaml.safe_load((output / "index.yaml").read_text())
    assert [t["id"] for t in index["trials"]] == [t["trial_id"] for t in summary["trials"]]
    for entry, episode in zip(index["trials"], summary["trials"]):
        assert entry["outcome"] == ("success" if episode["success"] else "failure")
        assert set(entry["condition"]) == {"layout", "background", "lighting", "object"}  # the protocol's factors
        assert entry["instruction"] == yaml.safe_load(PROTOCOL.read_text())["instruction"]
    # Different randomised starts (the sim's reset drew them).
    poses = [tuple(t["conditions"]["object_pose"]) for t in summary["trials"]]
    assert len(set(poses)) == 2
    assert summary["successes"] >= 1, "the expert failed every episode through the graph"


def test_bags_hold_cameras_joint_states_and_the_executed_commands(collected) -> None:
    output, summary = collected
    config = yaml.safe_load(ALOHA_YAML.read_text())
    camera_topics = [c["topic"] for c in config["cameras"]]
    joint_topics = [a["joint_state_topic"] for a in config["arms"]]
    for episode in summary["trials"]:
        record = yaml.safe_load((output / "trials" / episode["trial_id"] / "trial.yaml").read_text())
        topics = read_bag(output / "trials" / episode["trial_id"] / record["bag"])
        for topic in camera_topics:
            assert len(topics.get(topic, [])) >= 10, f"{topic}: too few frames"
        for topic in joint_topics:
            assert len(topics.get(topic, [])) >= 100, f"{topic}: too few joint states"
        chunks = topics["/qwen_vla/action_chunk"]
        commands = topics["/qwen_vla/controller/command"]
        assert len(chunks) >= 20 and len(commands) >= 200
        # The controller executed the expert's plan: the commanded right gripper closed (to grasp)
        # and opened again (to let go), and the right arm moved well away from the start pose.
        names = list(commands[0].name)
        gripper = np.array([c.position[names.index("right_gripper")] for c in commands])
        assert gripper.min() < 0.2 and gripper.max() > 0.9
        shoulder = np.array([c.position[names.index("right_shoulder")] for c in commands])
        assert np.ptp(shoulder) > 0.5
