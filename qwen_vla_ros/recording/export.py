"""Recorded trials as ALOHA-layout HDF5 episodes (or a LeRobot dataset, ``recording.lerobot``), for fine-tuning.

Each trial becomes ``episode_<n>.hdf5`` in the layout the ALOHA recorder writes and ACT-style
loaders read: ``/observations/qpos`` and ``/observations/qvel`` (T, arm state channels),
``/observations/images/<camera>`` (T, H, W, 3) RGB at the recorded resolution (or, by
default, JPEG-compressed as the ALOHA recorder's ``COMPRESS`` option does), ``/action``
(T, arm action channels) and, with a twist base, ``/base_action`` (T, 2); attribute ``sim``.
Rows are the trial resampled onto the control grid (``recording.episodes``, which says how
and from which topics).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.config.loader import parse_override
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.recording.bag import typestore_for_distro
from qwen_vla_ros.recording.episodes import DatasetExportError, EpisodeLayout, frames, layout_for, resample
from qwen_vla_ros.recording.lerobot import LeRobotWriter
from qwen_vla_ros.recording.trial import TrialRecord, TrialStore, write_yaml_atomically

FORMATS = ("aloha-hdf5", "lerobot")
DEFAULT_JPEG_QUALITY = 50  # the ALOHA recorder's COMPRESS setting ("tried as low as 20, seems fine")


@dataclass(frozen=True)
class Episode:
    path: Path
    steps: int
    image_shapes: dict[str, tuple[int, int, int]]


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
