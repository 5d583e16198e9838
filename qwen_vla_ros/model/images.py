"""Camera images -> Qwen3.5 vision patches, in numpy (torchvision cannot be installed here).

Each camera frame (uint8 HxWx3 RGB, any size) is resized to the checkpoint's resolution,
rescaled and normalised with the backbone's ``preprocessor_config.json`` statistics, and
cut into the flat patch layout of transformers' Qwen2-VL image processor (the one
Qwen3.5 uses): one row per patch, patches of a spatial-merge window adjacent, each row
laid out channel x temporal x patch x patch with the still frame repeated over time.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qwen_vla_ros.errors import PolicyInputError
from qwen_vla_ros.imaging import fit_frame, map_frames


@dataclass(frozen=True)
class PatchSpec:
    height: int
    width: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t, h, w) patch grid of one image, as transformers' image_grid_thw."""
        return 1, self.height // self.patch_size, self.width // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        _, grid_h, grid_w = self.grid
        return grid_h * grid_w // self.merge_size**2

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2


def check_images(images: Mapping[str, np.ndarray], cameras: Sequence[str]) -> list[np.ndarray]:
    """The frames in the embodiment's camera order, or a PolicyInputError naming the faulty camera."""
    if not isinstance(images, Mapping):
        raise PolicyInputError(f"images must be a dict camera name -> array, got {type(images).__name__}")
    missing = [name for name in cameras if name not in images]
    if missing:
        raise PolicyInputError(f"missing camera image(s) {missing}; the embodiment expects {list(cameras)}")
    extra = sorted(set(images) - set(cameras))
    if extra:
        raise PolicyInputError(f"unexpected camera image(s) {extra}; the embodiment expects {list(cameras)}")
    frames = []
    for name in cameras:
        frame = images[name]
        if not isinstance(frame, np.ndarray):
            raise PolicyInputError(f"camera {name!r}: image must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise PolicyInputError(f"camera {name!r}: image dtype must be uint8, got {frame.dtype}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise PolicyInputError(f"camera {name!r}: image must be HxWx3 RGB, got shape {frame.shape}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise PolicyInputError(f"camera {name!r}: image is empty, shape {frame.shape}")
        frames.append(frame)
    return frames


def resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    return fit_frame(frame, height, width)


def resize_all(frames: Sequence[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    """Side by side on the shared frame pool when two or more frames need resizing (the policy
    node hands frames already at size, which stay on the calling thread)."""
    if sum(frame.shape[:2] != (height, width) for frame in frames) < 2:
        return [resize(frame, height, width) for frame in frames]
    return map_frames(lambda frame: resize(frame, height, width), frames)


def patchify(frames: Sequence[np.ndarray], spec: PatchSpec) -> np.ndarray:
    """Resized uint8 frames -> (cameras * patches, patch_dim) float32, Qwen2-VL layout.

    The patch layout is made in uint8 (a quarter of the bytes to move), normalised straight
    into the output and copied over the temporal axis: about half the time of normalising the
    float image first (7 vs 3 ms for four 224x224 frames).
    """
    batch = np.stack(resize_all(frames, spec.height, spec.width))
    merge, patch = spec.merge_size, spec.patch_size
    _, grid_h, grid_w = spec.grid
    rows = batch.shape[0] * grid_h * grid_w
    # (n, H, W, C) -> (n, gh/m, m, p, gw/m, m, p, C) -> (n, gh/m, gw/m, m, m, C, p, p)
    layout = batch.reshape(batch.shape[0], grid_h // merge, merge, patch, grid_w // merge, merge, patch, 3)
    layout = layout.transpose(0, 1, 4, 2, 5, 7, 3, 6).reshape(rows, 3, 1, patch * patch)
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    patches = np.empty((rows, 3, spec.temporal_patch_size, patch * patch), np.float32)
    first = patches[:, :, :1]
    np.multiply(layout, 1.0 / (255.0 * std), out=first)  # (x / 255 - mean) / std up to float rounding
    first -= mean / std
    patches[:, :, 1:] = first
    return patches.reshape(rows, spec.patch_dim)
