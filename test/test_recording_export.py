"""ALOHA-layout HDF5 export of recorded trials: shapes, resampling to the control rate by
holding the latest sample, gripper normalisation, colour order, and clear refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

h5py = pytest.importorskip("h5py", reason="h5py is not installed: pip install '.[recording]'")
pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")

from qwen_vla_ros.cli import main as cli_main  # noqa: E402
from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.config.loader import parse_override  # noqa: E402
from qwen_vla_ros.recording.bag import RosbagsBagWriter, typestore_for_distro  # noqa: E402
from qwen_vla_ros.recording.session import RecorderIdentity, TrialSession  # noqa: E402
from qwen_vla_ros.recording.trial import TrialStore  # noqa: E402

TS = typestore_for_distro("humble")
T = TS.types
ALOHA = load_embodiment("aloha")
S = 1_000_000_000
T0 = 1_700_000_000 * S
MS = 1_000_000
HEIGHT, WIDTH = 12, 16
JOINT_NAMES = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper", "left_finger", "right_finger"]


def _header(stamp: int):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // S, nanosec=stamp % S), frame_id="")


def _serialize(message, msgtype: str) -> bytes:
    return bytes(TS.serialize_cdr(message, msgtype))


def _joint_state(stamp: int, positions: list[float], velocities: list[float], names=JOINT_NAMES) -> bytes:
    message = T["sensor_msgs/msg/JointState"](header=_header(stamp), name=list(names), position=np.array(positions),
                                              velocity=np.array(velocities), effort=np.array([], dtype=float))
    return _serialize(message, "sensor_msgs/msg/JointState")


def _pixels(value: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Frame ``value`` of a camera: channel 0 carries the frame number, the rest a smooth gradient."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = value
    pixels[..., 1] = 100 + np.arange(width)[None, :] * 50 // width
    pixels[..., 2] = 200 - np.arange(height)[:, None] * 50 // height
    return pixels


def _image(stamp: int, value: int, encoding: str, height: int = HEIGHT, width: int = WIDTH) -> bytes:
    pixels = _pixels(value, height, width)
    message = T["sensor_msgs/msg/Image"](header=_header(stamp), height=height, width=width, encoding=encoding,
                                         is_bigendian=0, step=width * 3, data=pixels.reshape(-1))
    return _serialize(message, "sensor_msgs/msg/Image")


def _arm_values(arm: int, j: int) -> list[float]:
    """Joint state j of an arm: joints vary with j, the fingers sweep from closed to open."""
    finger = ALOHA.arms[arm].gripper.finger_close + (j % 50) / 50 * (ALOHA.arms[arm].gripper.finger_open - ALOHA.arms[arm].gripper.finger_close)
    return [arm + 0.001 * j + 0.1 * k for k in range(6)] + [1.0, finger, -finger]


def _record_trial(root: Path, cam_encoding: str = "rgb8", overrides: tuple[str, ...] = (),
                  size: tuple[int, int] = (HEIGHT, WIDTH), instruction: str = "") -> dict:
    """One second of ALOHA streams at their real rates: joints 100 Hz, commands 50 Hz, cameras 30 Hz."""
    config = load_embodiment("aloha", dict(parse_override(t) for t in overrides))
    identity = RecorderIdentity("aloha", "ALOHA", "aloha", "torch", config_overrides=overrides, instruction=instruction)
    session = TrialSession(TrialStore(root), identity, None, lambda path: RosbagsBagWriter(path, TS))
    session.start(T0)
    streams: dict[str, list[tuple[int, object]]] = {}
    for j in range(101):
        stamp = T0 + j * 10 * MS
        for arm in (0, 1):
            topic = config.arms[arm].joint_state_topic
            streams.setdefault(arm, []).append((stamp, _arm_values(arm, j)))
            session.offer(topic, "sensor_msgs/msg/JointState", stamp + 2 * MS,
                          _joint_state(stamp, _arm_values(arm, j), [0.5] * 7 + [0.01 * j, 0.0]))
    for c in range(51):
        stamp = T0 + 3 * MS + c * 20 * MS
        action = [c + 0.01 * k for k in range(14)]
        streams.setdefault("command", []).append((stamp, action))
        session.offer("/qwen_vla/controller/command", "sensor_msgs/msg/JointState", stamp,
                      _joint_state(stamp, action, [], names=ALOHA.action.names))
    for index, camera in enumerate(ALOHA.cameras):
        encoding = cam_encoding if index == 0 else "rgb8"
        for f in range(31):
            stamp = T0 + 5 * MS + index * MS + round(f * 1e9 / 30)
            streams.setdefault(camera.name, []).append((stamp, f))
            session.offer(camera.topic, "sensor_msgs/msg/Image", stamp, _image(stamp, f, encoding, *size))
    session.stop("success", T0 + 2 * S)
    return streams


def _latest(samples: list[tuple[int, object]], t: int):
    """The last sample whose stamp is at or before t (samples arrive in time order)."""
    chosen = None
    for stamp, value in samples:
        if stamp <= t:
            chosen = value
    return chosen


def test_export_writes_aloha_layout_resampled_to_the_control_rate(tmp_path: Path, capsys) -> None:
    streams = _record_trial(tmp_path / "run", cam_encoding="bgr8")
    assert cli_main(["trials", "export", str(tmp_path / "run"), "--format", "aloha-hdf5", "--no-compress"]) == 0
    out = tmp_path / "run" / "export" / "aloha-hdf5"
    assert "trial_0001 (success) -> episode_0.hdf5" in capsys.readouterr().out

    start = max(samples[0][0] for samples in streams.values())
    end = min(samples[-1][0] for samples in streams.values())
    grid = [start + k * 20 * MS for k in range(100) if start + k * 20 * MS <= end]
    with h5py.File(out / "episode_0.hdf5", "r") as root:
        assert root.attrs["sim"] == False  # noqa: E712 - numpy bool
        assert root.attrs["trial"] == "trial_0001" and root.attrs["control_rate_hz"] == 50.0
        qpos, qvel, action = root["/observations/qpos"][()], root["/observations/qvel"][()], root["/action"][()]
        assert qpos.shape == (len(grid), 14) and qvel.shape == (len(grid), 14) and action.shape == (len(grid), 14)
        for camera in ALOHA.cameras:
            assert root[f"/observations/images/{camera.name}"].shape == (len(grid), HEIGHT, WIDTH, 3)
            assert root[f"/observations/images/{camera.name}"].dtype == np.uint8
        assert "base_action" not in root
        for k, t in enumerate(grid):
            for arm in (0, 1):
                values = _latest(streams[arm], t)
                gripper = ALOHA.arms[arm].gripper
                expected = values[:6] + [(values[7] - gripper.finger_close) / (gripper.finger_open - gripper.finger_close)]
                np.testing.assert_allclose(qpos[k, 7 * arm: 7 * arm + 7], expected, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(action[k], _latest(streams["command"], t), rtol=1e-6)
            for index, camera in enumerate(ALOHA.cameras):
                frame = root[f"/observations/images/{camera.name}"][k]
                value = _latest(streams[camera.name], t)
                rgb = [200, 100, value] if index == 0 else [value, 100, 200]  # camera 0 sent bgr8; pixel (0, 0)
                assert frame[0, 0].tolist() == rgb, (camera.name, k)
        np.testing.assert_allclose(qvel[:, :6], 0.5)
    manifest = yaml.safe_load((out / "episodes.yaml").read_text())
    assert manifest == [{"episode": "episode_0.hdf5", "trial": "trial_0001", "outcome": "success", "condition": {},
                         "instruction": "", "steps": len(grid)}]


def test_export_refuses_trials_with_missing_streams_and_says_which(tmp_path: Path, capsys) -> None:
    session = TrialSession(TrialStore(tmp_path), RecorderIdentity("aloha", "ALOHA", "aloha", "torch"), None,
                           lambda path: RosbagsBagWriter(path, TS))
    session.start(T0)
    session.offer(ALOHA.arms[0].joint_state_topic, "sensor_msgs/msg/JointState", T0,
                  _joint_state(T0, _arm_values(0, 0), []))
    session.stop("failure", T0 + S)
    assert cli_main(["trials", "export", str(tmp_path), "--format", "aloha-hdf5"]) == 2
    error = capsys.readouterr().err
    assert "trial_0001: not exported: no messages on" in error and "/follower_right/joint_states" in error


def test_export_of_an_end_effector_embodiment_is_refused_clearly(tmp_path: Path, capsys) -> None:
    _record_trial(tmp_path)
    assert cli_main(["trials", "export", str(tmp_path), "--format", "aloha-hdf5", "--config", "widowx"]) == 2
    assert "end-effector pose (ee_pose)" in capsys.readouterr().err


def test_export_reads_each_trial_with_the_config_overrides_it_was_recorded_with(tmp_path: Path, capsys) -> None:
    """An older rig's follower is called puppet_left: the recorder ran with that override."""
    _record_trial(tmp_path, overrides=("arms.0.joint_state_topic=/puppet_left/joint_states",))
    assert cli_main(["trials", "export", str(tmp_path), "--format", "aloha-hdf5"]) == 0
    with h5py.File(tmp_path / "export" / "aloha-hdf5" / "episode_0.hdf5", "r") as root:
        assert root["/observations/qpos"].shape[1] == 14
    assert cli_main(["trials", "export", str(tmp_path), "--format", "aloha-hdf5", "--config", "aloha",
                     "--out", str(tmp_path / "plain")]) == 2
    assert "/follower_left/joint_states" in capsys.readouterr().err


def test_hdf5_images_are_jpeg_compressed_by_default_as_aloha_does(tmp_path: Path) -> None:
    """ALOHA's COMPRESS layout: (T, padded) encoded bytes, /compress_len, attribute compress; the
    decoded frames match the raw export of the same trial, which is several times larger."""
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed: pip install opencv-python-headless")
    _record_trial(tmp_path / "run", size=(120, 160))
    run = str(tmp_path / "run")
    assert cli_main(["trials", "export", run, "--format", "aloha-hdf5", "--out", str(tmp_path / "jpeg")]) == 0
    assert cli_main(["trials", "export", run, "--format", "aloha-hdf5", "--no-compress", "--out", str(tmp_path / "raw")]) == 0
    jpeg, raw = tmp_path / "jpeg" / "episode_0.hdf5", tmp_path / "raw" / "episode_0.hdf5"
    assert jpeg.stat().st_size * 4 < raw.stat().st_size, (jpeg.stat().st_size, raw.stat().st_size)
    with h5py.File(jpeg, "r") as packed, h5py.File(raw, "r") as plain:
        assert packed.attrs["compress"] == True  # noqa: E712 - numpy bool
        lengths = packed["/compress_len"][()]
        assert lengths.shape == (len(ALOHA.cameras), plain["/action"].shape[0])
        for index, camera in enumerate(ALOHA.cameras):
            encoded = packed[f"/observations/images/{camera.name}"]
            assert encoded.ndim == 2 and encoded.shape[1] == lengths.max()
            for row in range(0, encoded.shape[0], 7):
                decoded = cv2.imdecode(encoded[row][: lengths[index, row]], cv2.IMREAD_COLOR)
                original = plain[f"/observations/images/{camera.name}"][row]
                assert decoded.shape == original.shape
                assert np.abs(decoded.astype(int) - original.astype(int)).mean() < 2.0  # JPEG quality 50
        np.testing.assert_array_equal(packed["/action"][()], plain["/action"][()])


def test_lerobot_export_writes_a_v3_dataset_that_reads_back(tmp_path: Path, capsys) -> None:
    """Checked against LeRobot's documented v3.0 layout (``lerobot`` itself is not installed here):
    meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/, data/ parquet, videos/ mp4."""
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: pip install '.[recording]'")
    pd = pytest.importorskip("pandas", reason="pandas is not installed: pip install '.[recording]'")
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed: pip install opencv-python-headless")
    size = (48, 64)
    first = _record_trial(tmp_path / "run", size=size, instruction="hand the cube over")
    _record_trial(tmp_path / "run", size=size, instruction="hand the cube over")
    out = tmp_path / "dataset"
    assert cli_main(["trials", "export", str(tmp_path / "run"), "--format", "lerobot", "--out", str(out)]) == 0
    assert "2 episodes" in capsys.readouterr().out

    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50.0 and info["total_episodes"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert features["observation.state"]["shape"] == [14] and features["action"]["shape"] == [14]
    assert features["action"]["names"] == list(ALOHA.action.names)
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert name in features
    keys = [f"observation.images.{c.name}" for c in ALOHA.cameras]
    for key in keys:
        assert features[key]["dtype"] == "video" and features[key]["shape"] == [*size, 3]

    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet").to_pandas()
    assert len(data) == info["total_frames"]
    assert data["index"].tolist() == list(range(len(data)))
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pandas()
    assert episodes["episode_index"].tolist() == [0, 1]
    assert episodes["dataset_from_index"].tolist() == [0, episodes["length"][0]]
    assert episodes["dataset_to_index"].tolist() == [episodes["length"][0], len(data)]
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert tasks.loc["hand the cube over", "task_index"] == 0
    assert list(episodes["tasks"][0]) == ["hand the cube over"]

    # Episode 0's rows hold the latest command and the frame numbers at each control tick.
    start = max(samples[0][0] for samples in first.values())
    rows = data[data["episode_index"] == 0]
    for k in range(0, len(rows), 9):
        tick = start + k * 20 * MS
        np.testing.assert_allclose(rows["action"].iloc[k], _latest(first["command"], tick), rtol=1e-6)
        assert rows["timestamp"].iloc[k] == pytest.approx(k / 50.0)
    np.testing.assert_allclose(json.loads((out / "meta" / "stats.json").read_text())["action"]["mean"],
                               np.stack(data["action"]).mean(0), rtol=1e-5)

    for key, camera in zip(keys, ALOHA.cameras):
        capture = cv2.VideoCapture(str(out / "videos" / key / "chunk-000" / "file-000.mp4"))
        decoded = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        assert len(decoded) == len(data), key
        assert episodes[f"videos/{key}/from_timestamp"][1] == pytest.approx(episodes["length"][0] / 50.0)
        for k in range(0, len(rows), 9):
            expected = _pixels(_latest(first[camera.name], start + k * 20 * MS), *size)
            assert np.abs(decoded[k].astype(int) - expected.astype(int)).mean() < 4.0, (key, k)


def test_unknown_export_format_and_bad_quality_exit_2(tmp_path: Path, capsys) -> None:
    _record_trial(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli_main(["trials", "export", str(tmp_path), "--format", "zarr"])
    assert exited.value.code == 2
    assert cli_main(["trials", "export", str(tmp_path), "--format", "aloha-hdf5", "--jpeg-quality", "0"]) == 2
    assert "JPEG quality must be 1..100" in capsys.readouterr().err
