"""End to end: ``qwen-vla-ros demo`` for 20 s of sim time, judged from the recorded bag.

Real processes over real DDS: MuJoCo sim, the policy on a tiny random checkpoint, the ALOHA
controller and the trial recorder, started by the runner in this test's ROS domain. The sim
runs in real time (``realtime:=true``, no /clock): its stamps are the ROS times of the
simulated instants, so rates measured from stamps are in sim time and wall time alike.
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
pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")

from helpers.limits import judged_limits  # noqa: E402
from helpers.robots import rate_limit_violations  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402

from qwen_vla_ros.bringup.graph import sim_overrides  # noqa: E402
from qwen_vla_ros.config import load_embodiment, parse_override  # noqa: E402
from qwen_vla_ros.contract import EXPERT_STATUS, INSTRUCTION, START_POSE  # noqa: E402
from qwen_vla_ros.control.layout import CommandLayout  # noqa: E402
from qwen_vla_ros.recording.topics import default_topics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
DURATION_S = 20.0


def read_bag(bag: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(header stamp ns or log time, message)]."""
    topics: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([bag]) as reader:
        for connection, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            header = getattr(msg, "header", None)
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header is not None else timestamp
            topics.setdefault(connection.topic, []).append((stamp, msg))
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert {t: len(m) for t, m in topics.items()} == {t: n for t, n in counts.items() if n}
    return topics


def unexplained_excursions(positions: np.ndarray, error: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                           window: int) -> list[tuple[int, int, float]]:
    """(sample, joint, largest recent error) where a measured joint is over 0.05 rad past a limit
    without a tracking error over 0.2 rad in the ``window`` samples up to it (see the test below)."""
    beyond = np.maximum(lower - positions, positions - upper)
    recent = np.array([error[max(0, i - window):i + 1].max(axis=0) for i in range(len(error))])
    return [(int(i), int(j), float(recent[i, j])) for i, j in np.argwhere((beyond > 0.05) & (recent <= 0.2))]


def test_a_joint_past_its_limit_is_explained_only_by_a_released_servo_error() -> None:
    """The judge of measured positions on its own: the failed run's shoulder at -1.931 (limit
    -1.85005) passes after a 0.6 rad tracking error half a second before, and fails without one."""
    lower, upper = np.array([-1.85005]), np.array([1.25664])
    positions = np.full((100, 1), -1.80)
    positions[60] = -1.931
    quiet = np.full((100, 1), 0.01)
    assert unexplained_excursions(positions, quiet, lower, upper, window=50) == [(60, 0, 0.01)]
    released = quiet.copy()
    released[35] = 0.6  # held back by a contact, then let go
    assert unexplained_excursions(positions, released, lower, upper, window=50) == []
    assert unexplained_excursions(positions, released, lower, upper, window=20) != [], "only the second before counts"


def longest_run(flags: np.ndarray) -> int:
    """The most consecutive True values."""
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


def run_demo(output: Path, checkpoint: Path, duration_s: float, domain: int, *extra: str) -> subprocess.CompletedProcess:
    from qwen_vla_ros.ros_env import with_dds_profile

    repo = Path(__file__).resolve().parent.parent
    env = with_dds_profile(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "qwen_vla_ros.cli", "demo", "--checkpoint", str(checkpoint), "--duration",
         str(duration_s), "--output", str(output), "--json", *extra],
        cwd=repo, env=env, capture_output=True, text=True, timeout=240,
    )


DEMO_ATTEMPTS = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_checkpoint):
    """Run the demo; the tests below judge its summary, trial.yaml and bag. A run that exits 1
    (chunks too late: the demo's four processes and EGL rendering load a 2-core machine past
    its cores, and an inference stall expired five chunks in one clean-clone CI run) is run
    again, up to ``DEMO_ATTEMPTS`` runs in all, as issue 20 §5 allows ("a number of retries");
    the tests judge the last run, and the verdict test names every earlier shortfall."""
    shortfalls: list[str] = []
    for attempt in range(DEMO_ATTEMPTS):
        result = run_demo(tmp_path_factory.mktemp("demo"), tiny_checkpoint, DURATION_S,
                          150 + (os.getpid() + attempt) % 50)
        assert result.returncode in (0, 1), f"demo failed:\n{result.stdout}\n{result.stderr[-4000:]}"
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["ok"] == (result.returncode == 0) and not summary["problems"], result.stderr[-4000:]
        if summary["ok"]:
            break
        shortfalls.append(f"run {attempt + 1} (load {os.getloadavg()[0]:.1f}): {summary['shortfalls']}")
    summary["earlier_shortfalls"] = shortfalls
    record = yaml.safe_load(Path(summary["trial_yaml"]).read_text())
    return summary, record, read_bag(Path(summary["bag"])), result.stderr


def test_summary_reports_the_trial_and_random_weights(demo) -> None:
    summary, record, _, stderr = demo
    assert summary["chunks"] > 0 and summary["sim_time_s"] >= DURATION_S
    assert summary["inference_ms_p50"] > 0 and summary["inference_ms_p99"] >= summary["inference_ms_p50"]
    assert summary["outcome"] == record["outcome"] and record["outcome"] in ("success", "failure")
    assert record["outcome"] == ("success" if summary["success"] else "failure")
    assert "RANDOM weights" not in stderr, "a given checkpoint is not called random"
    assert "chunks" in stderr and "control" in stderr, "progress is shown"


def test_summary_counts_the_chunks_the_controller_executed_and_how_far_the_robot_moved(demo) -> None:
    """Judged against the bag: the chunks that reached the controller (accepted, rejected or
    dropped) are those recorded on the chunk topic during the trial, give or take the chunks
    around its start and end (the controller counts once a second), and the robot moved as far
    as its recorded joint states say over the stretch of sim time the demo measured (the bag
    starts before it and ends after it, with the arms moving: over the bag's whole span one CI run
    gave 4.45 rad against the demo's 3.88)."""
    summary, _, topics, _ = demo
    recorded_chunks = len(topics["/qwen_vla/action_chunk"])
    arrived = summary["chunks_accepted"] + summary["chunks_rejected"] + summary["chunks_dropped"]
    assert arrived > 0 and summary["executed_fraction"] == pytest.approx(summary["chunks_accepted"] / arrived)
    assert abs(arrived - recorded_chunks) <= 3, (summary, recorded_chunks)
    assert summary["chunks_accepted"] <= recorded_chunks + 3  # the same chunks around the start and end
    assert sum(summary["rejections"].values()) == summary["chunks_rejected"]
    config = load_embodiment("aloha")
    first, last = summary["moved_between_ns"]
    assert (last - first) / 1e9 >= DURATION_S - 1.0, summary["moved_between_ns"]
    ranges = []
    for arm in config.arms:
        positions = np.array([m.position for stamp, m in topics[arm.joint_state_topic] if first <= stamp <= last])
        ranges.append((positions.max(axis=0) - positions.min(axis=0)).max())
    assert summary["moved_rad"] > 0.01 and summary["moved_rad"] == pytest.approx(max(ranges), rel=0.05)


def test_the_tiny_checkpoints_chunks_arrive_in_time_and_the_demo_passes(demo) -> None:
    """The timing claim of issue 20 §5, on this machine: nine in ten chunks executed, in one of
    ``DEMO_ATTEMPTS`` runs. Under heavy load (uptime over the core count) inference stalls can
    expire chunks: that is a finding (docs/benchmarks.md), not a reason to loosen the bound."""
    summary, _, _, _ = demo
    assert summary["executed_fraction"] >= 0.9 and summary["ok"], (
        f"load {os.getloadavg()}: {summary['shortfalls']}, inference p99 {summary['inference_ms_p99']} ms; "
        f"earlier runs: {summary['earlier_shortfalls']}")
    assert summary["shortfalls"] == []


def test_a_demo_whose_chunks_arrive_too_late_fails_and_says_why(tmp_path, tiny_checkpoint, ros_domain) -> None:
    """Chunks held back by the study delay at the chunk-age limit (2 s, safety.max_chunk_age_s)
    arrive stale: the controller refuses them all, the robot is not moved by any, and the demo
    exits 1 naming the reason, where publishing chunks once sufficed."""
    result = run_demo(tmp_path, tiny_checkpoint, 6.0, ros_domain.domain_id, "-r", "study.added_delay_s=2.0")
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr[-3000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert not summary["ok"] and summary["chunks"] > 0, "chunks were published"
    assert summary["chunks_accepted"] == 0 and summary["rejections"].get("stale", 0) >= 1, summary
    assert any("executed" in line for line in summary["shortfalls"]), summary["shortfalls"]


def test_bag_holds_every_recorded_topic_with_the_counts_of_trial_yaml(demo) -> None:
    _, record, topics, _ = demo
    assert record["topics"], "the recorder reports what it recorded"
    for topic, counts in record["topics"].items():
        assert len(topics.get(topic, [])) == counts["messages"], topic
    # Every topic of the recorded set that a node of the demo graph publishes: all but the
    # operator's (no joystick, no instruction or e-stop sent, no leader arms in the sim), the
    # scripted expert's status (the expert runs only when collecting demonstrations) and the
    # start-pose outcome (published only after a move_to_start, which the demo does not ask for).
    config = load_embodiment("aloha", dict(parse_override(o) for o in sim_overrides(load_embodiment("aloha"))))
    silent = {config.teleop.joy_topic, INSTRUCTION.name, config.safety.estop_topic, EXPERT_STATUS.name, START_POSE.name}
    expected = set(default_topics(config)) - silent
    assert "/follower_right/forward_position_controller/commands" in expected and len(expected) >= 14
    missing = sorted(t for t in expected if not topics.get(t))
    assert not missing, f"published in the demo but missing from the bag: {missing}"


def test_controller_commands_at_the_control_rate(demo) -> None:
    summary, _, topics, _ = demo
    config = load_embodiment("aloha")
    stamps = np.array([s for s, _ in topics["/qwen_vla/controller/command"]])
    assert np.all(np.diff(stamps) > 0)
    rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)
    assert rate == pytest.approx(config.control.rate_hz, rel=0.10), f"control rate {rate:.1f} Hz"
    assert summary["control_rate_hz"] == pytest.approx(config.control.rate_hz, rel=0.10)
    span = (stamps[-1] - stamps[0]) / 1e9
    assert span >= DURATION_S - 1.0, f"commands over {span:.1f} s of a {DURATION_S} s trial"


def test_commands_respect_limits_and_the_sim_tracks_them(demo) -> None:
    _, _, topics, _ = demo
    config = load_embodiment("aloha")
    layout = CommandLayout(config)
    period = 1.0 / config.control.rate_hz
    commands = topics["/qwen_vla/controller/command"]
    names = list(commands[0][1].name)
    assert names == list(layout.names)
    values = np.array([m.position for _, m in commands])
    stamps_ns = np.array([m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for _, m in commands])
    # Judged against the YAML file, the URDF and the reviewed envelope, not the layout's limits.
    limits = judged_limits("aloha", names)
    assert np.all(values >= limits.lower - 1e-9) and np.all(values <= limits.upper + 1e-9), "position limit violated"
    # limits hold over each period's real length, capped at the period (a late period moves less, never more)
    too_fast, too_sharp = rate_limit_violations(limits, values, stamps_ns, period)
    assert not too_fast.any(), f"velocity limit violated at commands {np.argwhere(too_fast)[:5].tolist()}"
    assert not too_sharp.any(), f"acceleration limit violated at commands {np.argwhere(too_sharp)[:5].tolist()}"
    moved = np.max(values, axis=0) - np.min(values, axis=0)
    assert moved.max() > 0.01, "the random policy should move the arms at all"

    for arm in config.arms:
        joint_names = [j.name for j in arm.joints]
        channels = [names.index(j.channel) for j in arm.joints]
        states = topics[arm.joint_state_topic]
        state_stamps = np.array([s for s, _ in states])
        positions = np.array([[dict(zip(m.name, m.position))[j] for j in joint_names] for _, m in states])
        # Tracking: each joint state against the command sent one period before it (the sim applies
        # a command at its next step). A random policy drives the joints near their velocity limit
        # (pi rad/s) and into the cube, the table and the other arm: gym-aloha's position servos lag
        # by a period or two and contacts push the light wrist joints off the command until the servo
        # brings them back. So: the typical error is small (median under 0.05 rad), nine in ten
        # samples are within 0.5 rad (measured 0.24 to 0.38 on forearm_roll, the lightest joint),
        # an excursion beyond 0.5 rad ends within a second (measured: at most 0.56 s), and the
        # worst stays under pi (measured up to 1.96 rad on wrist_angle, blocked by the table):
        # no drift, no runaway.
        command_stamps = np.array([s for s, _ in commands])
        after_start = state_stamps > command_stamps[0] + 1e9
        index_all = np.searchsorted(command_stamps, state_stamps - round(period * 1e9)) - 1  # -1: none yet
        commanded = index_all >= 0
        judged = positions[commanded]  # every state with a command before it
        error_all = np.abs(judged - values[index_all[commanded]][:, channels])
        error = error_all[after_start[commanded]]  # the tracking statistics skip the first second
        # Enough samples to judge: the sim publishes one state per tick, and a tick that catches up
        # several late periods on a loaded machine publishes once (measured 790 states over 18 s of a
        # 50 Hz sim under CI load), so: over the window judged, at least 60 % of the control rate.
        window_s = (state_stamps[after_start][-1] - command_stamps[0]) / 1e9 - 1.0
        assert window_s >= DURATION_S - 3.0, f"joint states judged over only {window_s:.1f} s"
        assert len(error) > 0.6 * window_s * config.control.rate_hz, f"{len(error)} states over {window_s:.1f} s"
        assert np.all(np.median(error, axis=0) < 0.05), f"{arm.name} median tracking error {np.median(error, axis=0)}"
        assert np.all(np.percentile(error, 90, axis=0) < 0.5), \
            f"{arm.name} 90th percentile tracking error {np.percentile(error, 90, axis=0).round(3)}"
        assert np.all(error.max(axis=0) < np.pi), f"{arm.name} worst tracking error {error.max(axis=0).round(3)} rad"
        # Measured positions, against the YAML/URDF limits. The commands hold them exactly (above);
        # the simulated joints may pass them where MuJoCo's joint range is a soft constraint. A
        # tracking joint passes them by at most 0.05 rad (gravity and the servo's lag at a commanded
        # limit: 0.0008 rad for the shoulder driven into its limit at full rate, up to 0.03 rad seen
        # here). Further only where a contact held the servo back and let go: gym-aloha's position
        # servos are undamped springs (shoulder kp 1600, no kv, no joint damping), so a servo error
        # released at once swings the joint past the commanded limit, the shoulder by 0.02 rad for
        # an error of 0.1 rad, 0.05 for 0.2, 0.06 for 0.25 and 0.46 for a full-range release
        # (bench/sim_servo_release.py). The -1.931 shoulder of a failed run (limit -1.85005) was
        # one. So a sample more than 0.05 rad past a limit must follow a tracking error over 0.2 rad
        # at that joint within the second before; how far such a swing goes is the physics of the
        # sim, bounded by the tracking checks above.
        samples_per_s = len(state_stamps) / ((state_stamps[-1] - state_stamps[0]) / 1e9)
        lower, upper = limits.lower[channels], limits.upper[channels]
        # Every sample from the first command's effect on is judged so, the first second included (the
        # tracking statistics above skip it; a random chunk executed in it can push a joint into the table
        # and release it, as one CI run found); the samples before it are the start pose.
        settling = positions[~commanded]
        assert np.all((settling >= lower - 0.05) & (settling <= upper + 0.05)), f"{arm.name} started outside its limits"
        for i, j, recent in unexplained_excursions(judged, error_all, lower, upper, max(1, round(samples_per_s)))[:1]:
            pytest.fail(f"{arm.name} {joint_names[j]} reached {judged[i, j]:.3f}, limits [{lower[j]}, {upper[j]}], "
                        f"with no tracking error over 0.2 rad in the second before (largest {recent:.3f})")
        # A stretch over 0.5 rad off must end: a joint the table blocks is held only while the chunks press it
        # there (0.56 s seen first; a forearm roll 1.44 s, with its wrist 0.76 s, in one CI run), so 3 s.
        longest = [longest_run(error[:, j] > 0.5) / samples_per_s for j in range(error.shape[1])]
        assert max(longest) <= 3.0, f"{arm.name} joints stayed over 0.5 rad off their command for {np.round(longest, 2)} s"


def test_start_up_says_what_it_waits_for_and_the_run_is_clean(demo) -> None:
    """The stages of the start-up are named as they pass; the trial names its run's own log
    folder; the bag spans the trial; no node logged a traceback or a clock-offset warning on
    this single host, shutdown included."""
    summary, record, _, stderr = demo
    stages = ["starting nodes:", "loading model (", "waiting for the first chunk ("]
    positions = [stderr.find(stage) for stage in stages]
    assert -1 not in positions and positions == sorted(positions), stderr[-3000:]
    logs = Path(summary["logs"])
    assert record["logs"] == str(logs) and logs.parent.name == "logs" and (logs / "policy_node.log").is_file()
    for log in logs.glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text and "inference step failed" not in text, f"{log.name}:\n{text[-3000:]}"
        assert "clock offset over" not in text, f"{log.name} warns of a clock offset on one host"
    with AnyReader([Path(summary["bag"])]) as reader:
        assert reader.duration / 1e9 <= record["duration_s"] + 0.5, "the bag spans the trial, not older latched state"
