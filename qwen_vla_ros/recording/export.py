"""Recorded trials as ALOHA-layout HDF5 episodes (or a LeRobot dataset, ``recording.lerobot``), for fine-tuning.

Each trial becomes ``episode_<n>.hdf5`` in the layout the ALOHA recorder writes and ACT-style
loaders read: ``/observations/qpos`` and ``/observations/qvel`` (T, arm state channels),
``/observations/images/<camera>`` (T, H, W, 3) RGB at the recorded resolution (or, by
default, JPEG-compressed as the ALOHA recorder's ``COMPRESS`` option does), ``/action``
(T, arm action channels) and, with a twist base, ``/base_action`` (T, 2); attribute ``sim``.
Streams are resampled onto the embodiment's control grid (``control.rate_hz``) by holding
the latest sample at or before each tick, from the last stream's first sample to the first
stream's last, so every row is real data and no image is interpolated. Sample times are
header stamps (capture times), or the bag's receive time where a stamp is zero.

Topics: joint states per arm (``arms[].joint_state_topic``), the controller's commanded
action on ``/qwen_vla/controller/command`` (sensor_msgs/JointState whose names are action
channel names, the values in action units) and the cameras of ``cameras[]``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config import EmbodimentConfig, load_embodiment
from qwen_vla_ros.config.loader import parse_override
from qwen_vla_ros.config.spaces import GripperSource, JointSource, OdometrySource
from qwen_vla_ros.contract import COMMAND
from qwen_vla_ros.embodiments.gripper import unlerp
from qwen_vla_ros.errors import InvalidArgumentError, QwenVlaError
from qwen_vla_ros.recording.bag import read_messages, typestore_for_distro
from qwen_vla_ros.recording.trial import TrialRecord, TrialStore, write_yaml_atomically

COMMAND_TOPIC = COMMAND.name
FORMATS = ("aloha-hdf5", "lerobot")
DEFAULT_JPEG_QUALITY = 50  # the ALOHA recorder's COMPRESS setting ("tried as low as 20, seems fine")


class DatasetExportError(QwenVlaError, ValueError):
    """A trial cannot become an episode; the message says which stream is missing or wrong."""


@dataclass(frozen=True)
class StateColumn:
    """How one qpos column is read from an arm's JointState."""

    arm: str
    joint: str
    scale_open: float | None = None  # gripper: normalise (x - close) / (open - close)
    close: float = 0.0

    def value(self, positions: dict[str, float]) -> float:
        raw = positions[self.joint]
        return raw if self.scale_open is None else unlerp(self.close, self.scale_open, raw)

    def rate(self, velocities: dict[str, float]) -> float:
        raw = velocities.get(self.joint, 0.0)
        return raw if self.scale_open is None else raw / (self.scale_open - self.close)


@dataclass(frozen=True)
class EpisodeLayout:
    rate_hz: float
    state: list[StateColumn]
    arm_topics: dict[str, str]
    action_channels: list[str]
    base_channels: list[str]
    cameras: dict[str, tuple[str, str]]  # name -> (topic, configured encoding)

    @property
    def required_topics(self) -> list[str]:
        return [*self.arm_topics.values(), COMMAND_TOPIC, *(topic for topic, _ in self.cameras.values())]


def layout_for(config: EmbodimentConfig) -> EpisodeLayout:
    """qpos = the state channels read from arm joint states; action = arm-driven channels."""
    columns = []
    for channel in config.state.channels:
        source = channel.source
        if isinstance(source, OdometrySource):
            continue
        arm = config.arm(source.arm)
        if isinstance(source, JointSource):
            columns.append(StateColumn(arm.name, source.joint))
        elif isinstance(source, GripperSource):
            gripper = arm.gripper
            assert gripper is not None  # the config validator guarantees it
            if gripper.state_from == "finger":
                columns.append(StateColumn(arm.name, gripper.finger_joint, gripper.finger_open, gripper.finger_close))
            else:
                columns.append(StateColumn(arm.name, gripper.joint, gripper.joint_open, gripper.joint_close))
        else:
            raise DatasetExportError(
                f"the aloha-hdf5 layout holds joint-space state; embodiment {config.name!r} state channel "
                f"{channel.name!r} is an end-effector pose ({source.kind})"
            )
    base = set(config.base.channels) if config.base is not None else set()
    return EpisodeLayout(
        rate_hz=config.control.rate_hz,
        state=columns,
        arm_topics={arm: config.arm(arm).joint_state_topic for arm in dict.fromkeys(c.arm for c in columns)},
        action_channels=[c for c in config.action.names if c not in base],
        base_channels=[c for c in config.action.names if c in base],
        cameras={c.name: (c.topic, c.encoding) for c in config.cameras},
    )


def _stamp(message: Any, log_time_ns: int) -> int:
    header = getattr(message, "header", None)
    if header is None:
        return log_time_ns
    stamp = header.stamp.sec * NS_PER_S + header.stamp.nanosec
    return stamp or log_time_ns


@dataclass
class _Series:
    """Sample times and rows of one stream, in arrival order."""

    stamps: list[int] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)

    def hold(self, grid: np.ndarray) -> np.ndarray:
        """Index of the latest sample at or before each grid time."""
        order = np.argsort(np.asarray(self.stamps), kind="stable")
        sorted_stamps = np.asarray(self.stamps)[order]
        return order[np.searchsorted(sorted_stamps, grid, side="right") - 1]


def _command_row(message: Any, channels: Sequence[str]) -> list[float]:
    positions = list(message.position)
    if not message.name:
        if len(positions) != len(channels):
            raise DatasetExportError(f"unnamed command has {len(positions)} values, expected {len(channels)}")
        return positions
    named = dict(zip(message.name, positions, strict=False))
    missing = [c for c in channels if c not in named]
    if missing:
        raise DatasetExportError(f"command on {COMMAND_TOPIC} lacks action channels {missing}")
    return [named[c] for c in channels]


def _image(message: Any, camera: str) -> np.ndarray:
    if message.encoding not in ("rgb8", "bgr8"):
        raise DatasetExportError(f"camera {camera} sends {message.encoding!r}; the episode layout holds rgb8 or bgr8")
    rows = np.asarray(message.data, dtype=np.uint8).reshape(message.height, message.step)
    frame = rows[:, : message.width * 3].reshape(message.height, message.width, 3)
    return frame[..., ::-1] if message.encoding == "bgr8" else frame


@dataclass(frozen=True)
class Episode:
    path: Path
    steps: int
    image_shapes: dict[str, tuple[int, int, int]]


@dataclass
class Resampled:
    """One trial on the control grid: rows of state and action, and which camera sample each row shows."""

    grid: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    actions: np.ndarray
    frame_rows: dict[str, dict[int, list[int]]]  # camera -> camera sample ordinal -> grid rows
    image_shapes: dict[str, tuple[int, int, int]]


def resample(bag: Path, layout: EpisodeLayout, typestore: Any) -> Resampled:
    """First pass over the bag: small streams and image times (frames stay on disk)."""
    arms: dict[str, _Series] = defaultdict(_Series)
    commands = _Series()
    cameras: dict[str, _Series] = defaultdict(_Series)
    image_shapes: dict[str, tuple[int, int, int]] = {}
    topic_to_arm = {topic: arm for arm, topic in layout.arm_topics.items()}
    topic_to_camera = {topic: name for name, (topic, _) in layout.cameras.items()}
    channels = layout.action_channels + layout.base_channels
    for topic, log_time, message in read_messages(bag, layout.required_topics, typestore):
        stamp = _stamp(message, log_time)
        if topic in topic_to_arm:
            arms[topic_to_arm[topic]].stamps.append(stamp)
            arms[topic_to_arm[topic]].rows.append(
                (dict(zip(message.name, message.position, strict=False)), dict(zip(message.name, message.velocity, strict=False)))
            )
        elif topic == COMMAND_TOPIC:
            commands.stamps.append(stamp)
            commands.rows.append(_command_row(message, channels))
        else:
            name = topic_to_camera[topic]
            shape = (int(message.height), int(message.width), 3)
            if image_shapes.setdefault(name, shape) != shape:
                raise DatasetExportError(f"camera {name} changes resolution from {image_shapes[name]} to {shape}")
            cameras[name].stamps.append(stamp)

    streams = {**{layout.arm_topics[a]: s for a, s in arms.items()}, COMMAND_TOPIC: commands,
               **{layout.cameras[c][0]: s for c, s in cameras.items()}}
    missing = [topic for topic in layout.required_topics if not streams.get(topic, _Series()).stamps]
    if missing:
        raise DatasetExportError(f"no messages on {missing}")
    start = max(min(s.stamps) for s in streams.values())
    end = min(max(s.stamps) for s in streams.values())
    if end < start:
        raise DatasetExportError("the recorded streams do not overlap in time")
    period_ns = NS_PER_S / layout.rate_hz
    grid = start + np.round(np.arange(int((end - start) // period_ns) + 1) * period_ns).astype(np.int64)

    qpos = np.empty((len(grid), len(layout.state)), np.float32)
    qvel = np.empty_like(qpos)
    for column, spec in enumerate(layout.state):
        series = arms[spec.arm]
        for step, sample in enumerate(series.hold(grid)):
            positions, velocities = series.rows[sample]
            try:
                qpos[step, column] = spec.value(positions)
            except KeyError:
                raise DatasetExportError(f"joint states of arm {spec.arm!r} lack joint {spec.joint!r}") from None
            qvel[step, column] = spec.rate(velocities)
    actions = np.asarray(commands.rows, dtype=np.float32)[commands.hold(grid)]
    frame_rows = {name: _rows_by_sample(series.hold(grid)) for name, series in cameras.items()}
    return Resampled(grid, qpos, qvel, actions, frame_rows, image_shapes)


def frames(bag: Path, layout: EpisodeLayout, resampled: Resampled, typestore: Any) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Second pass: (camera, grid rows, RGB frame) for every frame some row shows, in bag order."""
    topic_to_camera = {topic: name for name, (topic, _) in layout.cameras.items()}
    ordinals: dict[str, int] = defaultdict(int)
    for topic, _, message in read_messages(bag, [t for t, _ in layout.cameras.values()], typestore):
        name = topic_to_camera[topic]
        rows = resampled.frame_rows[name].get(ordinals[name], [])
        ordinals[name] += 1
        if rows:
            yield name, rows, _image(message, name)


def export_episode(bag: Path, layout: EpisodeLayout, path: Path, attributes: dict[str, Any],
                   jpeg_quality: int | None = DEFAULT_JPEG_QUALITY) -> Episode:
    """ALOHA HDF5; with ``jpeg_quality`` the images are JPEG-compressed as the ALOHA recorder's
    ``COMPRESS`` option stores them: each camera a (T, padded) uint8 dataset of encoded bytes,
    zero-padded to the longest, ``/compress_len`` (cameras, T) the true lengths, attribute
    ``compress`` True. Decode a row with ``cv2.imdecode(row[:length], cv2.IMREAD_COLOR)``: it
    gives back the RGB array that was encoded (the bytes are written as OpenCV would a BGR one)."""
    import h5py

    typestore = typestore_for_distro()
    resampled = resample(bag, layout, typestore)
    steps = len(resampled.grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    with h5py.File(scratch, "w") as root:
        root.attrs["sim"] = False
        root.attrs["compress"] = jpeg_quality is not None
        for key, value in attributes.items():
            root.attrs[key] = value
        observations = root.create_group("observations")
        observations.create_dataset("qpos", data=resampled.qpos)
        observations.create_dataset("qvel", data=resampled.qvel)
        root.create_dataset("action", data=resampled.actions[:, : len(layout.action_channels)])
        if layout.base_channels:
            root.create_dataset("base_action", data=resampled.actions[:, len(layout.action_channels):])
        images = observations.create_group("images")
        if jpeg_quality is None:
            datasets = {
                name: images.create_dataset(name, (steps, *shape), dtype=np.uint8, chunks=(1, *shape))
                for name, shape in resampled.image_shapes.items()
            }
            for name, rows, frame in frames(bag, layout, resampled, typestore):
                for row in rows:
                    datasets[name][row] = frame
        else:
            _write_jpeg_images(root, images, frames(bag, layout, resampled, typestore),
                               list(resampled.image_shapes), steps, jpeg_quality)
    scratch.replace(path)
    return Episode(path, steps, resampled.image_shapes)


def _write_jpeg_images(root: Any, images: Any, stream: Iterable[tuple[str, list[int], np.ndarray]],
                       cameras: list[str], steps: int, quality: int) -> None:
    import cv2

    encoded: dict[str, list[np.ndarray | None]] = {name: [None] * steps for name in cameras}
    for name, rows, frame in stream:
        ok, buffer = cv2.imencode(".jpg", frame, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise DatasetExportError(f"camera {name}: JPEG encoding failed")
        for row in rows:
            encoded[name][row] = buffer.reshape(-1)  # held frames share one encoding
    lengths = np.array([[len(b) if b is not None else 0 for b in encoded[name]] for name in cameras])
    padded = int(lengths.max()) if lengths.size else 0
    for name in cameras:
        dataset = images.create_dataset(name, (steps, padded), dtype=np.uint8, chunks=(1, padded))
        for row, frame_bytes in enumerate(encoded[name]):
            if frame_bytes is not None:
                dataset[row, : len(frame_bytes)] = frame_bytes
    root.create_dataset("compress_len", data=lengths)


def _rows_by_sample(selected: np.ndarray) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = defaultdict(list)
    for row, sample in enumerate(selected.tolist()):
        rows[sample].append(row)
    return rows


@dataclass
class ExportResult:
    episodes: list[tuple[TrialRecord, Episode]] = field(default_factory=list)
    failures: list[tuple[TrialRecord, str]] = field(default_factory=list)


def export_trials(
    root: str | Path,
    out_dir: str | Path,
    outcomes: Iterable[str] = ("success", "failure"),
    config: str | None = None,
    format: str = "aloha-hdf5",
    jpeg_quality: int | None = DEFAULT_JPEG_QUALITY,
) -> ExportResult:
    """One episode per trial with a wanted outcome; ``episodes.yaml`` maps episodes to trials.

    Each trial is read with the embodiment config (and overrides) it was recorded with,
    unless ``config`` names another. ``aloha-hdf5`` writes ``episode_<n>.hdf5`` files
    (images JPEG-compressed unless ``jpeg_quality`` is None); ``lerobot`` writes one LeRobot
    v3.0 dataset (``recording.lerobot``), whose episodes must share one layout and camera size.
    """
    if format not in FORMATS:
        raise InvalidArgumentError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise InvalidArgumentError(f"JPEG quality must be 1..100, got {jpeg_quality}")
    store = TrialStore(root)
    out = Path(out_dir).expanduser()
    wanted = set(outcomes)
    result = ExportResult()
    layouts: dict[tuple[str, ...], EpisodeLayout] = {}
    manifest = []
    lerobot = None
    for record in store.records():
        if record.outcome not in wanted:
            continue
        source = (config,) if config else (record.config, *record.config_overrides)
        try:
            if source not in layouts:
                overrides = dict(parse_override(text) for text in source[1:])
                layouts[source] = layout_for(load_embodiment(source[0], overrides))
            layout = layouts[source]
            if format == "lerobot":
                from qwen_vla_ros.recording.lerobot import LeRobotWriter

                if lerobot is None:
                    lerobot = LeRobotWriter(out, layout, record.embodiment)
                elif layout != lerobot.layout:
                    raise DatasetExportError("recorded with another embodiment layout than the dataset's first episode")
                typestore = typestore_for_distro()
                bag = store.bag_dir(record)
                resampled = resample(bag, layout, typestore)
                index = lerobot.add(resampled, frames(bag, layout, resampled, typestore), record.instruction)
                episode = Episode(out / f"episode_{index}", len(resampled.grid), resampled.image_shapes)
            else:
                episode_path = out / f"episode_{len(result.episodes)}.hdf5"
                attributes = {"trial": record.id, "outcome": record.outcome or "", "instruction": record.instruction,
                              "embodiment": record.embodiment, "control_rate_hz": layout.rate_hz}
                episode = export_episode(store.bag_dir(record), layout, episode_path, attributes, jpeg_quality)
        except (DatasetExportError, FileNotFoundError, KeyError, ValueError) as exc:
            result.failures.append((record, str(exc)))
            continue
        result.episodes.append((record, episode))
        manifest.append({"episode": episode.path.name, "trial": record.id, "outcome": record.outcome,
                         "condition": record.condition, "instruction": record.instruction, "steps": episode.steps})
    if lerobot is not None:
        lerobot.close()
    if manifest:
        write_yaml_atomically(out / "episodes.yaml", manifest)
    return result
