"""``qwen-vla-ros eval`` end to end on the random tiny checkpoint (it fails the task: this checks
the plumbing and the JSON, not the policy). Real processes over real DDS: MuJoCo sim, policy,
controller and recorder in this test's ROS domain; Wilson intervals are checked against the
textbook formula written out here, not the report module's."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
pytest.importorskip("mujoco", reason="mujoco is not installed: pip install '.[sim]'")
pytest.importorskip("gym_aloha", reason="gym-aloha (the MJCF assets) is not installed: pip install '.[sim]'")

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "config" / "protocols" / "aloha_sim_ood.yaml"
KEYS = {"trials", "successes", "success_rate", "wilson_95", "per_factor", "chunks_accepted", "chunks_rejected",
        "inference_ms_p50", "inference_ms_p99"}


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927), from its definition."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return centre - half, centre + half


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_checkpoint):
    from qwen_vla_ros.ros_env import with_dds_profile

    output = tmp_path_factory.mktemp("eval")
    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(50 + os.getpid() % 50), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               HOME=str(tmp_path_factory.mktemp("home")),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "qwen_vla_ros.cli", "eval", "--checkpoint", str(tiny_checkpoint), "--protocol",
         str(PROTOCOL), "--trials", "2", "--timeout", "4", "--output", str(output), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, f"eval failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return output, json.loads(result.stdout.strip().splitlines()[-1])


def test_json_has_the_promised_fields_and_wilson_intervals(evaluated) -> None:
    _, data = evaluated
    assert KEYS <= set(data) and data["problems"] == []
    assert data["trials"] == 2 and 0 <= data["successes"] <= 2
    assert data["success_rate"] == data["successes"] / 2
    assert data["wilson_95"] == pytest.approx(wilson(data["successes"], 2), abs=1e-9)
    for levels in data["per_factor"].values():
        assert sum(level["trials"] for level in levels.values()) == 2
        for level in levels.values():
            if level["trials"]:
                assert level["wilson_95"] == pytest.approx(wilson(level["successes"], level["trials"]), abs=1e-9)
    assert data["chunks_accepted"] > 0 and data["chunks_rejected"] >= 0
    assert data["inference_ms_p50"] > 0 and data["inference_ms_p99"] >= data["inference_ms_p50"]
    assert [t["chunks_accepted"] for t in data["per_trial"]] and all(t["chunks_accepted"] >= 0 for t in data["per_trial"])


def test_trials_follow_the_protocol_and_the_sim_applies_each_condition(evaluated) -> None:
    output, data = evaluated
    protocol = yaml.safe_load(PROTOCOL.read_text())
    index = yaml.safe_load((output / "index.yaml").read_text())
    assert len(index["trials"]) == 2
    # one_at_a_time, round_robin: the baseline first, then the first factor's second level.
    baseline = {f["name"]: (f["levels"][0] if isinstance(f["levels"][0], str) else f["levels"][0]["name"])
                for f in protocol["factors"]}
    position = protocol["factors"][0]
    assert index["trials"][0]["condition"] == baseline
    assert index["trials"][1]["condition"] == {**baseline, "position": position["levels"][1]["name"]}
    for entry, trial in zip(index["trials"], data["per_trial"]):
        assert entry["outcome"] == ("success" if trial["success"] else "failure")
        assert entry["instruction"] == protocol["instruction"]
    # The sim echoed the randomisation it reset with: the wide level's ranges, and the cube was drawn in them.
    wide = position["levels"][1]["sim"]
    drawn = data["per_trial"][1]["conditions_drawn"]
    assert drawn["randomization"] == wide
    assert wide["object_x"][0] <= drawn["object_pose"][0] <= wide["object_x"][1]
    assert data["per_trial"][0]["conditions_drawn"]["randomization"] == {}
    assert (output / "report.md").is_file() and (output / "report.png").stat().st_size > 0
    assert "position" in (output / "report.md").read_text()


def test_every_trial_starts_from_the_yaml_start_pose_and_its_record_keeps_the_arrival(evaluated) -> None:
    """Before each trial the controller takes the arms to the start pose (between trials they hold where the
    last one ended); each trial's record carries that move, judged against the pose and tolerance in the YAML."""
    output, _ = evaluated
    pose = yaml.safe_load((REPO / "config" / "aloha.yaml").read_text())["start_pose"]
    index = yaml.safe_load((output / "index.yaml").read_text())
    for entry in index["trials"]:
        record = yaml.safe_load((output / entry["path"] / "trial.yaml").read_text())
        moved = record["start_pose"]
        assert moved is not None and moved["arrived"] and not moved["interrupted"], record["id"]
        assert moved["pose"] == pose["joints"]
        assert set(moved["error_rad"]) == set(pose["joints"])
        assert all(error <= pose["tolerance_rad"] for error in moved["error_rad"].values()), moved
