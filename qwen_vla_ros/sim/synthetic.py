"""Synthetic camera images for the kinematic simulators, so a policy has visual inputs.

Not photorealistic, but every pixel follows the simulated state: a top-down view of a
checkered floor that moves with the base's odometry pose, and a disc per arm at its
end-effector position (size grows with height, colour goes green when open, red when closed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from qwen_vla_ros.config.hardware import Camera

FLOOR_TILE_M = 0.5
FLOOR_VIEW_M = 6.0  # width of floor seen across the image
ARM_VIEW_M = 1.2  # width of the arm workspace seen across the image


@dataclass(frozen=True)
class SyntheticScene:
    """What the images show: per arm, the end-effector position (base frame) and gripper opening."""

    end_effectors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    grippers: dict[str, float] = field(default_factory=dict)
    base_pose: tuple[float, float, float] | None = None  # x, y, yaw in the odometry frame


def floor_image(pose: tuple[float, float, float], width: int, height: int) -> np.ndarray:
    """Top-down view centred on the base, its heading pointing up the image."""
    x, y, yaw = pose
    scale = FLOOR_VIEW_M / width
    cols = (np.arange(width) - width / 2 + 0.5) * scale
    rows = (np.arange(height) - height / 2 + 0.5) * scale
    forward = -rows[:, None]  # image up = robot +x
    left = -cols[None, :]  # image left = robot +y
    cos, sin = math.cos(yaw), math.sin(yaw)
    world_x = x + cos * forward - sin * left
    world_y = y + sin * forward + cos * left
    checker = (np.floor(world_x / FLOOR_TILE_M) + np.floor(world_y / FLOOR_TILE_M)) % 2
    image = np.empty((height, width, 3), np.uint8)
    # Slow colour gradients make distant tiles distinguishable, so motion is visible in both axes.
    image[..., 0] = (100 + 80 * checker + 30 * np.sin(world_x * 0.7)).astype(np.uint8)
    image[..., 1] = (100 + 80 * checker + 30 * np.sin(world_y * 0.7)).astype(np.uint8)
    image[..., 2] = (90 + 60 * checker).astype(np.uint8)
    return image


def draw_arms(image: np.ndarray, scene: SyntheticScene) -> None:
    """Discs at each end effector seen from above: +x up the image, +y to the left."""
    height, width = image.shape[:2]
    scale = width / ARM_VIEW_M
    for name, (x, y, z) in scene.end_effectors.items():
        opening = scene.grippers.get(name, 1.0)
        centre = (int(round(width / 2 - y * scale)), int(round(height * 0.9 - x * scale)))
        radius = max(3, int(round((0.02 + max(z, 0.0) * 0.1) * scale)))
        colour = (int(255 * (1 - opening)), int(255 * opening), 60)
        cv2.circle(image, centre, radius, colour, thickness=-1)


class SyntheticRenderer:
    """Renders every configured camera from a :class:`SyntheticScene` (same picture on each)."""

    def __init__(self, cameras: list[Camera], width: int, height: int) -> None:
        self._cameras = [(c.name, c.encoding) for c in cameras]
        self._width, self._height = width, height

    def render(self, scene: SyntheticScene) -> dict[str, np.ndarray]:
        if scene.base_pose is not None:
            image = floor_image(scene.base_pose, self._width, self._height)
        else:
            image = np.full((self._height, self._width, 3), 70, np.uint8)
        draw_arms(image, scene)
        return {name: image[..., ::-1].copy() if encoding == "bgr8" else image.copy() for name, encoding in self._cameras}

    def close(self) -> None:
        pass
