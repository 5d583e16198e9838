"""Camera frames become Qwen3.5 vision patches exactly as transformers' processor makes them."""
from __future__ import annotations

import numpy as np
import pytest

from qwen_vla_ros.errors import PolicyInputError
from qwen_vla_ros.model.images import PatchSpec, check_images, patchify, resize, resize_all

SPEC = PatchSpec(height=64, width=96, patch_size=16, temporal_patch_size=2, merge_size=2,
                 mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))


def test_patchify_equals_the_qwen2_vl_image_processor(make_images) -> None:
    processing = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
                                     reason="transformers (and pillow) are not installed")
    frames = list(make_images(["a", "b"], seed=3, height=SPEC.height, width=SPEC.width).values())
    processor = processing.Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=list(SPEC.mean), image_std=list(SPEC.std)
    )
    expected = processor(images=frames, do_resize=False, return_tensors="np")
    assert expected["image_grid_thw"].tolist() == [list(SPEC.grid)] * 2
    ours = patchify(frames, SPEC)
    assert ours.shape == expected["pixel_values"].shape == (2 * 4 * 6, SPEC.patch_dim)
    np.testing.assert_allclose(ours, expected["pixel_values"], atol=1e-5)


def test_any_frame_size_is_resized_to_the_checkpoint_resolution(make_images) -> None:
    for height, width in ((480, 640), (20, 30), (64, 96)):
        frame = make_images(["cam"], height=height, width=width)["cam"]
        assert resize(frame, SPEC.height, SPEC.width).shape == (SPEC.height, SPEC.width, 3)
        assert patchify([frame], SPEC).shape == (4 * 6, SPEC.patch_dim)


def test_cameras_resized_side_by_side_keep_their_order(make_images) -> None:
    frames = list(make_images(["a", "b", "c"], seed=5, height=480, width=640).values())
    for frame, resized in zip(frames, resize_all(frames, SPEC.height, SPEC.width), strict=True):
        np.testing.assert_array_equal(resized, resize(frame, SPEC.height, SPEC.width))


def test_frames_come_back_in_the_embodiment_camera_order(make_images) -> None:
    images = make_images(["wrist", "high"])
    frames = check_images(images, ["high", "wrist"])
    assert frames[0] is images["high"] and frames[1] is images["wrist"]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda images: images.pop("high"), "missing camera image(s) ['high']"),
        (lambda images: images.update(extra=images["high"]), "unexpected camera image(s) ['extra']"),
        (lambda images: images.update(high=images["high"].astype(np.float32)), "dtype must be uint8"),
        (lambda images: images.update(high=images["high"][..., :1]), "HxWx3"),
        (lambda images: images.update(high=np.zeros((8, 8, 4), np.uint8)), "HxWx3"),
        (lambda images: images.update(high=images["high"].tolist()), "numpy array"),
    ],
)
def test_bad_images_are_named(make_images, mutate, words) -> None:
    images = make_images(["high", "wrist"])
    mutate(images)
    with pytest.raises(PolicyInputError) as raised:
        check_images(images, ["high", "wrist"])
    assert words in str(raised.value)
