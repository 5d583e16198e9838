"""A tiny synthetic LeRobot dataset, written by the export's own writer, for the training and open-loop tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qwen_vla_ros.config import load_embodiment
from qwen_vla_ros.recording.episodes import Resampled, layout_for
from qwen_vla_ros.recording.lerobot import LeRobotWriter

ALOHA = load_embodiment("aloha")
START = np.array([0, -0.96, 1.16, 0, -0.3, 0, 0.5] * 2)
STEPS = 12


def synthetic_actions() -> np.ndarray:
    """The (STEPS, 14) commands of every episode: a smooth sweep of each channel around START."""
    return START + 0.2 * np.sin(np.arange(STEPS)[:, None] / 4.0 + np.arange(14)[None, :])


def synthetic_dataset(root: Path, episodes: int = 1) -> None:
    """12-row episodes: a smooth joint sweep, images whose brightness follows the row; from the second episode on,
    a white square at a place of its own in the left or right half of the image."""
    layout = layout_for(ALOHA)
    rows = np.arange(STEPS)
    actions = synthetic_actions()
    cameras = {c.name: (24, 32, 3) for c in ALOHA.cameras}
    writer = LeRobotWriter(root, layout, "aloha")
    for episode in range(episodes):
        resampled = Resampled(rows, actions.astype(np.float32), np.zeros_like(actions, np.float32),
                              actions.astype(np.float32), {c: {k: [k] for k in rows} for c in cameras}, cameras)
        writer.add(resampled, (image for k in rows for image in episode_frames(cameras, k, episode)),
                   "hand the cube over")
    writer.close()


def episode_frames(cameras: dict[str, tuple[int, int, int]], row: int, episode: int):
    for camera, shape in cameras.items():
        image = np.full(shape, 20 * row, np.uint8)
        if episode:
            left = 2 if episode % 2 else 18
            image[8:16, left:left + 8] = 255
        yield camera, [row], image
