"""The one rule for fitting a camera frame to a size and channel order, and the one pool that runs it.

The camera node (publishing at the configured size and encoding), the policy node (the
model's resolution, RGB) and the model itself (any frame handed to ``Policy.infer``) all
resize the same way: OpenCV's area filter when shrinking, as the model's own preprocessing
does, bilinear otherwise; then red and blue are swapped where asked, after the resize, so the
swap runs on the smaller image. Why this sits at the bottom of the package rather than in
``perception`` or ``model``: docs/architecture.md, "Package layout".
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import cv2
import numpy as np

Result = TypeVar("Result")

# OpenCV's area filter at a non-integer ratio (640x480 -> 224x224) runs on one thread, 2 to 3 ms
# a frame, and releases the GIL, so several cameras resize side by side. Four workers: ALOHA's
# four cameras, the most any shipped embodiment has. A task must not wait on the pool itself.
_FRAME_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="frames")


def fit_frame(image: np.ndarray, height: int, width: int, *, swap_red_blue: bool = False) -> np.ndarray:
    """An HxWx3 uint8 frame at ``height`` x ``width``, red and blue swapped if asked; C-contiguous.

    The input may be a read-only or strided view (a message buffer, a crop); it is not written.
    """
    if image.shape[:2] != (height, width):
        shrinking = image.shape[0] * image.shape[1] > height * width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)
    if swap_red_blue:  # cv2: 0.1 ms for 640x480, a reversed numpy copy 3.5 ms
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def map_frames(function: Callable[..., Result], *iterables: Iterable[Any]) -> list[Result]:
    """``function`` over the items side by side on the frame pool, results in input order."""
    return list(_FRAME_WORKERS.map(function, *iterables))
