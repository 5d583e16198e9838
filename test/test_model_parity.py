"""The policy's backbone path equals transformers' Qwen3.5 on the same tokens, and its cached
prefix equals recomputation: the explicit-state trunk, the batched vision tower, M-RoPE
positions and the no-mutation guarantee, on the tiny checkpoint in float32."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from qwen_vla_ros.model import load_policy  # noqa: E402
from qwen_vla_ros.model.images import check_images, patchify  # noqa: E402

INSTRUCTION = "pick up the cube and hand it to the other arm"
STATE = np.zeros(14)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path):
    policy = load_policy(tiny_checkpoint)
    policy.set_task("aloha", INSTRUCTION)
    return policy


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    """transformers' own model, loaded separately from the same backbone directory."""
    return transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        tiny_checkpoint / "backbone", dtype=torch.float32
    ).eval()


def transformers_features(model, policy, images) -> np.ndarray:
    with torch.no_grad():
        out = model(**policy.model_inputs(images), output_hidden_states=True)
    layers = policy.manifest.backbone.feature_layers
    return torch.cat([out.hidden_states[layer] for layer in layers], dim=-1)[0].numpy()


def test_encode_equals_transformers_hidden_states_at_the_feature_layers(policy, reference, make_images) -> None:
    images = make_images(policy.task.cameras, seed=1, height=480, width=640)
    features = policy.encode(images, STATE)
    expected = transformers_features(reference, policy, images)
    assert features.shape == expected.shape == (len(policy.task.layout.full_ids), policy.manifest.action_head.context_dim)
    assert np.abs(features - expected).max() <= 1e-4
    assert np.abs(expected).mean() > 0.1, "features too small for the tolerance to mean anything"


def test_parity_includes_the_final_norm_layer(tiny_checkpoint: Path, tmp_path: Path, make_images) -> None:
    """Reading the last layer means transformers' final-normed output; the order of layers is kept."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    manifest = json.loads((copy / "qwen_vla.json").read_text())
    manifest["backbone"]["feature_layers"] = [6, 1]
    (copy / "qwen_vla.json").write_text(json.dumps(manifest))
    policy = load_policy(copy)
    policy.set_task("widowx", "put the spoon in the bowl")
    images = make_images(policy.task.cameras, seed=2)
    reference = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(copy / "backbone", dtype=torch.float32)
    expected = transformers_features(reference.eval(), policy, images)
    assert np.abs(policy.encode(images, np.zeros(7)) - expected).max() <= 1e-4


def test_vision_encoder_equals_the_transformers_vision_tower(policy, make_images) -> None:
    frames = check_images(make_images(policy.task.cameras, seed=3), policy.task.cameras)
    pixels = torch.from_numpy(patchify(frames, policy.patch_spec))
    with torch.no_grad():
        expected = policy.vision.visual(pixels, grid_thw=policy.task.grid_thw).pooler_output
        ours = policy.vision(pixels.view(len(frames), -1, pixels.shape[-1]), *policy.vision_geometry)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-5


# The cached prefix and a full recomputation sum in different orders, so float32 rounding
# separates them by an amount that depends on the CPU's kernels: at most 1.1e-5 on an AMD EPYC,
# under 1e-5 on an Intel Xeon. A state leaking between calls moves features by over 1e-2.
RECOMPUTATION_ATOL = 5e-5


def full_recomputation(policy, images) -> np.ndarray:
    """The whole sequence through the same trunk from the empty state: no cache involved."""
    task, trunk = policy.task, policy.step_backbone.trunk
    inputs = policy.model_inputs(images)
    language = policy.backbone_model.model.language_model
    with torch.no_grad():
        frames = check_images(images, task.cameras)
        pixels = inputs["pixel_values"].view(len(frames), -1, inputs["pixel_values"].shape[-1])
        image_tokens = policy.vision(pixels, *policy.vision_geometry)
        prefix = len(task.layout.prefix_ids)
        embeds = language.embed_tokens(inputs["input_ids"]).index_copy(1, task.image_index + prefix, image_tokens[None])
        positions, _ = policy.backbone_model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
        cos, sin = language.rotary_emb(embeds, positions)
        return trunk(embeds, cos, sin, *trunk.empty_state(policy.device, policy.dtype))[0].numpy()


def test_cached_prefix_equals_full_recomputation(policy, make_images) -> None:
    images = make_images(policy.task.cameras, seed=4)
    assert np.abs(policy.encode(images, STATE) - full_recomputation(policy, images)).max() <= RECOMPUTATION_ATOL


def test_different_images_on_one_prefix_leak_no_state(policy, tiny_checkpoint: Path, make_images) -> None:
    first, second = (make_images(policy.task.cameras, seed=seed) for seed in (5, 6))
    before = [tensor.clone() for tensor in policy.task.prefix_state]
    sequence = [policy.encode(images, STATE) for images in (first, second, first)]
    policy.infer(second, STATE, seed=0)
    policy.infer(first, STATE, committed=np.zeros((10, 14)), delay_steps=3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.task.prefix_state)), "the prefix state was mutated"
    assert np.abs(sequence[0] - sequence[1]).max() > 1e-2, "the images must change the features"
    fresh = load_policy(tiny_checkpoint)
    for images, cached in zip((first, second, first), sequence):
        fresh.set_task("aloha", INSTRUCTION)  # a fresh prefix for every run
        assert np.abs(fresh.encode(images, STATE) - cached).max() <= 1e-5
        assert np.abs(full_recomputation(fresh, images) - cached).max() <= RECOMPUTATION_ATOL


def test_transformers_forward_in_between_does_not_corrupt_the_cached_prefix(policy, reference, make_images) -> None:
    """transformers keeps M-RoPE offsets in ``model.rope_deltas``; a forward on another input
    changes them. The policy's positions are its own, so its features do not move."""
    images = make_images(policy.task.cameras, seed=7)
    before = policy.encode(images, STATE)
    other = make_images(policy.task.cameras, seed=8)
    with torch.no_grad():
        policy.backbone_model(**policy.model_inputs(other))
    assert policy.backbone_model.model.rope_deltas is not None
    np.testing.assert_array_equal(policy.encode(images, STATE), before)


def test_parity_is_sensitive_to_the_m_rope_positions(policy, make_images) -> None:
    """Negative control: with plain 1-D positions (the Qwen-VL trap when mm_token_type_ids is
    dropped) the features move far beyond the parity tolerance."""
    images = make_images(policy.task.cameras, seed=9)
    task = policy.task
    language = policy.backbone_model.model.language_model
    prefix = len(task.layout.prefix_ids)
    positions = torch.arange(prefix, prefix + len(task.layout.step_ids)).view(1, 1, -1).expand(3, 1, -1)
    cos, sin = language.rotary_emb(task.step_template, positions)
    frames = check_images(images, task.cameras)
    with torch.no_grad():
        pixels = torch.from_numpy(patchify(frames, policy.patch_spec)).view(len(frames), -1, policy.patch_spec.patch_dim)
        tokens = policy.vision(pixels, *policy.vision_geometry)
        wrong = policy.step_backbone(tokens, task.step_template, task.image_index, cos, sin, *task.prefix_state)
    right = policy.encode(images, STATE)[prefix:]
    assert np.abs(wrong[0].numpy() - right).max() > 1e-3
