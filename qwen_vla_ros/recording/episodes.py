"""A recorded trial resampled onto the control grid: what every dataset export writes.

Streams are resampled onto the embodiment's control grid (``control.rate_hz``) by holding
the latest sample at or before each tick, from the last stream's first sample to the first
stream's last, so every row is real data and no image is interpolated. Sample times are
header stamps (capture times), or the bag's receive time where a stamp is zero.

Topics: joint states per arm (``arms[].joint_state_topic``), the controller's commanded
action on ``contract.COMMAND`` (sensor_msgs/JointState whose names are action channel
names, the values in action units) and the cameras of ``cameras[]``.

Its own module, below both writers (``recording.export`` for ALOHA HDF5,
``recording.lerobot`` for LeRobot), so neither imports the other back.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen_vla_ros.chunk import NS_PER_S
from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.config.spaces import GripperSource, JointSource, OdometrySource
from qwen_vla_ros.contract import COMMAND
from qwen_vla_ros.embodiments.gripper import unlerp
from qwen_vla_ros.errors import QwenVlaError
from qwen_vla_ros.recording.bag import read_messages

COMMAND_TOPIC = COMMAND.name


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


def _rows_by_sample(selected: np.ndarray) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = defaultdict(list)
    for row, sample in enumerate(selected.tolist()):
        rows[sample].append(row)
    return rows
