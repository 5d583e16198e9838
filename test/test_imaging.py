"""One preprocessing rule: the camera node, the policy node and the model fit a frame alike.

The frame is a real MuJoCo render of the ALOHA cell (edges, shading, texture), not noise,
so the area and bilinear filters give visibly different pixels. The expected pixels are
written here from OpenCV directly (area when shrinking, bilinear otherwise, then the
channels reversed in numpy), independently of :func:`qwen_vla_ros.imaging.fit_frame`.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.imaging import fit_frame, map_frames  # noqa: E402
from qwen_vla_ros.model.images import resize, resize_all  # noqa: E402
from qwen_vla_ros.perception.images import model_rgb  # noqa: E402
from qwen_vla_ros.perception.sources import Frame, published_image  # noqa: E402
from qwen_vla_ros.sim.world import Simulation  # noqa: E402

RENDER_H, RENDER_W = 480, 640
SIZES = {"downscale": (224, 224), "upscale": (720, 960)}


@pytest.fixture(scope="module")
def real_frame() -> np.ndarray:
    """cam_high of the simulated ALOHA cell, RGB, 640x480, read-only like a message buffer."""
    sim = Simulation(load_embodiment("aloha", {"sim.render_width": RENDER_W, "sim.render_height": RENDER_H}))
    renderer = sim.make_renderer()
    try:
        sim.reset(np.random.default_rng(1))
        image = renderer.render(sim.snapshot())["cam_high"]
    finally:
        renderer.close()
    assert image.shape == (RENDER_H, RENDER_W, 3) and image.std() > 20, "a real scene, not a blank frame"
    image = image.copy()
    image.setflags(write=False)
    return image


def by_the_rule(image: np.ndarray, height: int, width: int, swap: bool) -> np.ndarray:
    interpolation = cv2.INTER_AREA if image.shape[0] * image.shape[1] > height * width else cv2.INTER_LINEAR
    resized = cv2.resize(np.array(image), (width, height), interpolation=interpolation)
    return np.ascontiguousarray(resized[..., ::-1]) if swap else resized


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_the_three_former_call_sites_give_the_pixels_of_the_one_rule(real_frame, size: str, encoding: str) -> None:
    height, width = SIZES[size]
    frame = real_frame if encoding == "rgb8" else np.ascontiguousarray(real_frame[..., ::-1])  # as a bgr8 camera sends it
    to_rgb = encoding == "bgr8"
    expected = by_the_rule(frame, height, width, swap=to_rgb)
    other = cv2.INTER_LINEAR if size == "downscale" else cv2.INTER_AREA
    assert not np.array_equal(cv2.resize(np.array(frame), (width, height), interpolation=other),
                              by_the_rule(frame, height, width, swap=False)), "the filter choice must show in the pixels"

    np.testing.assert_array_equal(fit_frame(frame, height, width, swap_red_blue=to_rgb), expected)
    # camera_node: publish at the configured size in rgb8 (a bgr8 source is swapped)
    camera = load_embodiment("aloha", {"cameras.0.width": width, "cameras.0.height": height,
                                       "cameras.0.encoding": "rgb8"}).cameras[0]
    published, _ = published_image(Frame(frame, encoding), camera)
    np.testing.assert_array_equal(published, expected)
    # policy node: a message buffer of either encoding -> RGB at the model's resolution
    np.testing.assert_array_equal(model_rgb(frame, encoding, height, width), expected)
    # model: RGB frames handed to Policy.infer
    rgb = by_the_rule(real_frame, height, width, swap=False)
    np.testing.assert_array_equal(resize(real_frame, height, width), rgb)
    for resized in resize_all([real_frame, real_frame], height, width):
        np.testing.assert_array_equal(resized, rgb)


def test_a_strided_view_is_read_not_written(real_frame) -> None:
    crop = real_frame[10:-10, 20:-20]
    result = fit_frame(crop, 224, 224, swap_red_blue=True)
    assert result.flags.c_contiguous and result.shape == (224, 224, 3)
    np.testing.assert_array_equal(result, by_the_rule(np.ascontiguousarray(crop), 224, 224, swap=True))


def test_the_frame_pool_keeps_input_order() -> None:
    assert map_frames(lambda a, b: a * b, range(10), range(10)) == [i * i for i in range(10)]
