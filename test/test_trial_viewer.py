"""The trial page and the report page, opened in a real headless Chromium.

A trial is recorded through the real session and rosbags writer with the ALOHA topics (four
cameras, both arms' joint states, controller commands, chunks, mode, diagnostics with a
rejection); ``trials view`` and ``trials report`` write the pages; Chromium (the Debian
``chromium`` package) loads them from disk with no server and dumps the DOM after its scripts
ran. The page script writes each video's duration into the DOM, so the dump shows whether the
browser could decode the embedded WebM.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")
pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install '.[recording]'")

from qwen_vla_ros.cli import main  # noqa: E402
from qwen_vla_ros.recording.bag import RosbagsBagWriter, typestore_for_distro  # noqa: E402
from qwen_vla_ros.recording.session import RecorderIdentity, TrialSession  # noqa: E402
from qwen_vla_ros.recording.trial import TrialStore  # noqa: E402

TYPES = typestore_for_distro("humble")
S = 1_000_000_000
START = 100 * S
SECONDS = 4
CAMERAS = ["/cam_high/camera/color/image_raw", "/cam_low/camera/color/image_raw",
           "/cam_left_wrist/camera/color/image_raw", "/cam_right_wrist/camera/color/image_raw"]
JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
CHANNELS = [f"{side}_{joint}" for side in ("left", "right") for joint in JOINTS]


def _cdr(msgtype: str, **fields) -> bytes:
    return bytes(TYPES.serialize_cdr(TYPES.types[msgtype](**fields), msgtype))


def _header(t_ns: int) -> object:
    time = TYPES.types["builtin_interfaces/msg/Time"](sec=t_ns // S, nanosec=t_ns % S)
    return TYPES.types["std_msgs/msg/Header"](stamp=time, frame_id="")


def _joint_state(t_ns: int, names: list[str], positions: list[float]) -> bytes:
    return _cdr("sensor_msgs/msg/JointState", header=_header(t_ns), name=names, position=np.array(positions),
                velocity=np.zeros(0), effort=np.zeros(0))


def _diagnostics(t_ns: int, rejected: int) -> bytes:
    pair = TYPES.types["diagnostic_msgs/msg/KeyValue"](key="chunks_rejected", value=str(rejected))
    status = TYPES.types["diagnostic_msgs/msg/DiagnosticStatus"](level=b"\x00"[0], name="aloha_controller",
                                                                 message="", hardware_id="", values=[pair])
    return _cdr("diagnostic_msgs/msg/DiagnosticArray", header=_header(t_ns), status=[status])


def _chunk(t_ns: int, observed_ns: int) -> bytes:
    duration = TYPES.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=20_000_000)
    point = TYPES.types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.zeros(len(CHANNELS)), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=duration)
    return _cdr("trajectory_msgs/msg/JointTrajectory", header=_header(observed_ns), joint_names=CHANNELS, points=[point])


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """An output folder with one recorded 4 s ALOHA trial."""
    store = TrialStore(tmp_path / "trials_out")
    identity = RecorderIdentity("aloha", "ALOHA", "aloha", "torch", "/ckpt", "abc", "pick up the cube")
    session = TrialSession(store, identity, None, lambda path: RosbagsBagWriter(path, TYPES))
    session.offer("/qwen_vla/mode", "std_msgs/msg/String", START - 27 * S, _cdr("std_msgs/msg/String", data="policy"),
                  latched=True)
    session.start(START)
    rng = np.random.default_rng(0)
    for k in range(SECONDS * 50):
        t = START + k * 20_000_000
        command = [0.3 * math.sin(0.5 * k / 50 + i) for i in range(len(CHANNELS))]
        session.offer("/qwen_vla/controller/command", "sensor_msgs/msg/JointState", t, _joint_state(t, CHANNELS, command))
        for side, offset in (("left", 0), ("right", 7)):
            session.offer(f"/follower_{side}/joint_states", "sensor_msgs/msg/JointState", t,
                          _joint_state(t, JOINTS, [v * 0.95 for v in command[offset:offset + 7]]))
        if k % 5 == 0:  # cameras at 10 Hz
            for camera in CAMERAS:
                image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                session.offer(camera, "sensor_msgs/msg/Image", t, _cdr(
                    "sensor_msgs/msg/Image", header=_header(t), height=48, width=64, encoding="rgb8", is_bigendian=0,
                    step=64 * 3, data=image.reshape(-1)))
        if k % 25 == 10:  # a chunk every 0.5 s, observed 120 ms before it arrived
            session.offer("/qwen_vla/action_chunk", "trajectory_msgs/msg/JointTrajectory", t, _chunk(t, t - 120_000_000))
        if k % 50 == 0:
            session.offer("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", t, _diagnostics(t, k // 100))
        if k == 120:
            session.on_mode("teleop", t)
            session.offer("/qwen_vla/mode", "std_msgs/msg/String", t, _cdr("std_msgs/msg/String", data="teleop"))
    session.stop("failure", START + SECONDS * S)
    return store.root


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("headless Chromium is missing: apt-get install -y chromium (.ci/run installs it)")


def _render(page: Path, profile: Path) -> tuple[str, str]:
    """(DOM after the page's scripts ran, browser log with console messages)."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
               f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]


def test_trial_page_plays_in_chromium(recorded: Path, tmp_path: Path, capsys) -> None:
    trial = recorded / "trials" / "trial_0001"
    assert main(["trials", "view", str(trial)]) == 0
    page = trial / "view.html"
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:|//)', text), "the page must load nothing from elsewhere"
    dom, log = _render(page, tmp_path / "profile")
    videos = re.findall(r"<video[^>]*>", dom)
    assert len(videos) == 4, dom[:2000]
    durations = [float(d) for d in re.findall(r'data-duration="([0-9.]+)"', dom)]
    assert len(durations) == 4 and all(d > 1.0 for d in durations), (durations, log[-2000:])
    assert 'data-error' not in dom
    assert re.search(r'<div class="plot" id="joints"><svg', dom) and re.search(r'<div class="plot" id="latency"><svg', dom)
    assert dom.count("<path") > 20, "the joint and latency plots have lines and bars"
    assert "intervention" in dom and "rejected" in dom and 'id="metadata"' in dom
    assert "p50 120 ms" in dom, "latency = receive time minus observation stamp, 120 ms by construction"
    assert not _console_errors(log), _console_errors(log)


def test_report_page_links_each_trial_page(recorded: Path, tmp_path: Path) -> None:
    assert main(["trials", "report", str(recorded)]) == 0
    dom, log = _render(recorded / "report.html", tmp_path / "profile")
    assert '<table class="factors">' in dom and 'id="factors-plot"' in dom and "data:image/png;base64," in dom
    assert '<a href="trials/trial_0001/view.html">trial_0001</a>' in dom
    assert (recorded / "trials" / "trial_0001" / "view.html").is_file()
    assert not _console_errors(log), _console_errors(log)


def test_view_of_a_folder_that_is_no_trial_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["trials", "view", str(tmp_path)]) == 2
    assert "not a trial folder" in capsys.readouterr().err
