"""Recorded trials as a LeRobot dataset (format v3.0), for fine-tuning with the ``lerobot`` package.

Layout (one chunk and one file per stream: recorded sets are small; LeRobot splits files at
100 MB of data and 500 MB of video, which a later export can follow):

    meta/info.json                          codebase_version v3.0, fps, features, path templates
    meta/stats.json                         min/max/mean/std/count per feature (images per channel, in [0, 1])
    meta/tasks.parquet                      task (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet  per episode: length, tasks, row range, data and video file and span
    data/chunk-000/file-000.parquet         one row per control period: observation.state, action, timestamp,
                                            frame_index, episode_index, index, task_index
    videos/observation.images.<camera>/chunk-000/file-000.mp4   every episode's frames, back to back

Rows are the trial resampled onto the control grid (``recording.episodes``), as in the HDF5 export; each
video has one frame per row (a camera frame held over the rows it covers), written with
OpenCV's MPEG-4 encoder. The instruction recorded with a trial is its task.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen_vla_ros.recording.episodes import DatasetExportError, EpisodeLayout, Resampled

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
VIDEO_CODEC = ("mp4v", "mpeg4")  # OpenCV fourcc, and the codec name ffmpeg (LeRobot's decoders) knows it by


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


def _numeric_stats(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "count": [len(values)]}


@dataclass
class _ImageStats:
    """Per-channel statistics of every frame row, pixels scaled to [0, 1] as LeRobot normalises them."""

    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(3))
    low: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))
    high: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))

    def add(self, frame: np.ndarray, repeats: int) -> None:
        pixels = frame.reshape(-1, 3).astype(np.float64) / 255.0
        self.count += repeats
        self.total += pixels.mean(0) * repeats
        self.squares += (pixels**2).mean(0) * repeats
        self.low = np.minimum(self.low, pixels.min(0))
        self.high = np.maximum(self.high, pixels.max(0))

    def as_dict(self) -> dict[str, Any]:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean**2, 0.0))
        per_channel = lambda v: [[[float(c)]] for c in v]  # noqa: E731 - LeRobot's (3, 1, 1)
        return {"min": per_channel(self.low), "max": per_channel(self.high), "mean": per_channel(mean),
                "std": per_channel(std), "count": [self.count]}


class LeRobotWriter:
    """Accumulates episodes (rows in memory, frames straight into the videos), then writes the metadata."""

    def __init__(self, out: Path, layout: EpisodeLayout, robot_type: str) -> None:
        self.out = out
        self.layout = layout
        self.robot_type = robot_type
        self.fps = layout.rate_hz
        self.state_names = [f"{c.arm}_{c.joint}" for c in layout.state]
        self.action_names = layout.action_channels + layout.base_channels
        self.columns: dict[str, list[Any]] = {k: [] for k in (
            "observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index")}
        self.episodes: list[dict[str, Any]] = []
        self.tasks: dict[str, int] = {}
        self.videos: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.image_stats: dict[str, _ImageStats] = {}
        self.frames_written: dict[str, int] = {}

    def _video(self, camera: str, shape: tuple[int, int, int]) -> Any:
        import cv2

        if camera not in self.videos:
            path = self.out / VIDEO_PATH.format(video_key=video_key(camera), chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*VIDEO_CODEC[0]), self.fps, (shape[1], shape[0]))
            if not writer.isOpened():
                raise DatasetExportError(f"OpenCV cannot write {VIDEO_CODEC[1]} video to {path}")
            self.videos[camera], self.shapes[camera] = writer, shape
            self.image_stats[camera], self.frames_written[camera] = _ImageStats(), 0
        elif self.shapes[camera] != shape:
            raise DatasetExportError(f"camera {camera} is {shape} here but {self.shapes[camera]} in an earlier episode; "
                              "one LeRobot video holds one resolution")
        return self.videos[camera]

    def add(self, resampled: Resampled, frames: Iterable[tuple[str, list[int], np.ndarray]], task: str) -> int:
        """Append one episode; returns its episode index."""
        import cv2

        if set(resampled.image_shapes) != set(self.layout.cameras):
            raise DatasetExportError(f"cameras {sorted(resampled.image_shapes)} differ from {sorted(self.layout.cameras)}")
        episode = len(self.episodes)
        steps = len(resampled.grid)
        first_row = len(self.columns["index"])
        task_index = self.tasks.setdefault(task, len(self.tasks))
        video_start = {c: self.frames_written.get(c, 0) for c in resampled.image_shapes}
        written = dict.fromkeys(resampled.image_shapes, 0)
        for camera, rows, frame in frames:
            writer = self._video(camera, resampled.image_shapes[camera])
            if rows[0] != written[camera]:
                raise DatasetExportError(f"camera {camera}: frames out of row order at row {rows[0]}")
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            for _ in rows:
                writer.write(bgr)
            written[camera] += len(rows)
            self.image_stats[camera].add(frame, len(rows))
        for camera, count in written.items():
            if count != steps:
                raise DatasetExportError(f"camera {camera}: {count} frames for {steps} rows")
            self.frames_written[camera] = video_start.get(camera, 0) + count
        self.columns["observation.state"] += resampled.qpos.tolist()
        self.columns["action"] += resampled.actions.tolist()
        self.columns["timestamp"] += (np.arange(steps) / self.fps).tolist()
        self.columns["frame_index"] += list(range(steps))
        self.columns["episode_index"] += [episode] * steps
        self.columns["index"] += list(range(first_row, first_row + steps))
        self.columns["task_index"] += [task_index] * steps
        row: dict[str, Any] = {
            "episode_index": episode, "tasks": [task], "length": steps,
            "data/chunk_index": 0, "data/file_index": 0,
            "dataset_from_index": first_row, "dataset_to_index": first_row + steps,
        }
        for camera in sorted(resampled.image_shapes):
            key = video_key(camera)
            row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": video_start[camera] / self.fps,
                    f"videos/{key}/to_timestamp": (video_start[camera] + steps) / self.fps}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self.episodes.append(row)
        return episode

    def close(self) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        for writer in self.videos.values():
            writer.release()
        if not self.episodes:
            return
        data = self.out / DATA_PATH.format(chunk_index=0, file_index=0)
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "observation.state": pa.array(self.columns["observation.state"], pa.list_(pa.float32(), len(self.state_names))),
            "action": pa.array(self.columns["action"], pa.list_(pa.float32(), len(self.action_names))),
            "timestamp": pa.array(self.columns["timestamp"], pa.float32()),
            **{k: pa.array(self.columns[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
        }), data)
        meta = self.out / "meta"
        (self.out / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), self.out / EPISODES_PATH)
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(meta / "tasks.parquet")
        (meta / "stats.json").write_text(json.dumps(self._stats(), indent=2))
        (meta / "info.json").write_text(json.dumps(self._info(), indent=2))

    def _stats(self) -> dict[str, Any]:
        stats = {name: _numeric_stats(np.asarray(values)) for name, values in self.columns.items()}
        stats |= {video_key(camera): s.as_dict() for camera, s in self.image_stats.items()}
        return stats

    def _info(self) -> dict[str, Any]:
        scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
        features: dict[str, Any] = {
            "observation.state": {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names},
            "action": {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names},
        }
        for camera, (height, width, channels) in sorted(self.shapes.items()):
            features[video_key(camera)] = {
                "dtype": "video", "shape": [height, width, channels], "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": VIDEO_CODEC[1],
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                         "video.channels": channels, "has_audio": False},
            }
        features |= {"timestamp": scalar("float32"), "frame_index": scalar("int64"),
                     "episode_index": scalar("int64"), "index": scalar("int64"), "task_index": scalar("int64")}
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": len(self.episodes), "total_frames": len(self.columns["index"]),
            "total_tasks": len(self.tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
        }
