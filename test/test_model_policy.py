"""Policy behaviour on the tiny checkpoint: determinism, masking, the backbone really feeding the
actions, real-time chunking, normalisation from the checkpoint, and clear errors for bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from qwen_vla_ros.chunk import ActionChunk  # noqa: E402
from qwen_vla_ros.config import EMBODIMENTS, load_embodiment  # noqa: E402
from qwen_vla_ros.errors import InvalidArgumentError, PolicyInputError  # noqa: E402
from qwen_vla_ros.model import load_policy  # noqa: E402
from qwen_vla_ros.model.checkpoint import CheckpointError  # noqa: E402
from qwen_vla_ros.model.normalization import ChannelNormalizer  # noqa: E402
from qwen_vla_ros.model.sampler import Guidance, euler_sample  # noqa: E402

INSTRUCTION = "pick up the cube and hand it to the other arm"


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path):
    return load_policy(tiny_checkpoint)


def observation(policy, make_images, embodiment: str = "aloha", seed: int = 0):
    policy.set_task(embodiment, INSTRUCTION)
    config = load_embodiment(embodiment)
    state = ChannelNormalizer.from_stats(config.normalization.state).offset
    return make_images(policy.task.cameras, seed=seed), state


def test_a_seed_fixes_the_chunk_and_another_seed_changes_it(policy, make_images) -> None:
    images, state = observation(policy, make_images)
    first = policy.infer(images, state, seed=11)
    assert isinstance(first, ActionChunk) and first.stamp_ns is None
    np.testing.assert_array_equal(policy.infer(images, state, seed=11).actions, first.actions)
    assert np.abs(policy.infer(images, state, seed=12).actions - first.actions).max() > 1e-3


@pytest.mark.parametrize("name", EMBODIMENTS)
def test_each_embodiment_gets_its_own_channels_and_timing(policy, make_images, name: str) -> None:
    images, state = observation(policy, make_images, name)
    config = load_embodiment(name)
    chunk = policy.infer(images, state, seed=0)
    assert chunk.actions.shape == (config.control.chunk_length, len(config.action.channels))
    assert chunk.actions.dtype == np.float32 and np.all(np.isfinite(chunk.actions))
    assert chunk.channel_names == tuple(config.action.names)
    assert chunk.dt == config.control.action_dt


def test_padded_channels_never_leak(policy, make_images) -> None:
    """The sampled padded chunk is exactly zero off the mask, and the head's outputs for padded
    channels can be anything without changing the actions."""
    images, state = observation(policy, make_images, "widowx")
    task = policy.task
    features = torch.from_numpy(policy.encode(images, state)).unsqueeze(0)
    with torch.no_grad():
        padded = policy.sample(task, features, state, seed=3)
    off_mask = np.setdiff1d(np.arange(padded.shape[1]), task.entry.action_mask)
    assert np.all(padded[:, off_mask] == 0.0) and np.abs(padded[:, task.entry.action_mask]).max() > 0.1
    before = policy.infer(images, state, seed=3).actions
    out = policy.head.action_out
    saved = out.weight.detach().clone(), out.bias.detach().clone()
    try:
        with torch.no_grad():
            out.weight[off_mask] += 5.0
            out.bias[off_mask] -= 3.0
        np.testing.assert_array_equal(policy.infer(images, state, seed=3).actions, before)
    finally:
        with torch.no_grad():
            out.weight.copy_(saved[0])
            out.bias.copy_(saved[1])


def test_the_backbone_really_drives_the_actions(tiny_checkpoint: Path, make_images) -> None:
    policy = load_policy(tiny_checkpoint)
    images, state = observation(policy, make_images)
    before = policy.infer(images, state, seed=5).actions
    other_images = make_images(policy.task.cameras, seed=99)
    assert np.abs(policy.infer(other_images, state, seed=5).actions - before).max() > 1e-4, "images must matter"
    layers = policy.backbone_model.model.language_model.layers
    with torch.no_grad():
        layers[5].mlp.down_proj.weight.mul_(3.0)  # above the deepest feature layer (5): never run
    policy.set_task("aloha", INSTRUCTION)
    np.testing.assert_array_equal(policy.infer(images, state, seed=5).actions, before)
    with torch.no_grad():
        layers[1].mlp.down_proj.weight.mul_(3.0)
    policy.set_task("aloha", INSTRUCTION)
    assert np.abs(policy.infer(images, state, seed=5).actions - before).max() > 1e-4
    with torch.no_grad():
        policy.backbone_model.model.visual.blocks[0].mlp.linear_fc2.weight.mul_(3.0)
    perturbed_vision = policy.infer(images, state, seed=5).actions
    policy.set_task("aloha", INSTRUCTION)
    assert np.abs(perturbed_vision - before).max() > 1e-4


def test_an_embodiment_without_cameras_reads_the_prefix_only(policy, make_images) -> None:
    images, state = observation(policy, make_images, "mobile_base")
    blind = load_embodiment("mobile_base").model_copy(update={"cameras": []})
    policy.set_task(blind, INSTRUCTION)
    assert policy.encode({}, state).shape[0] == len(policy.task.layout.prefix_ids)
    assert policy.infer({}, state, seed=0).actions.shape == (8, 3)
    with pytest.raises(PolicyInputError, match="unexpected camera"):
        policy.infer(images, state)


def test_instruction_changes_the_prefix_and_the_actions(policy, make_images) -> None:
    images, state = observation(policy, make_images)
    before = policy.infer(images, state, seed=2).actions
    policy.set_task("aloha", "fold the towel in half")
    assert np.abs(policy.infer(images, state, seed=2).actions - before).max() > 1e-4


def decelerating(state: np.ndarray, length: int) -> np.ndarray:
    """A committed trajectory that slows down: every step smaller than the one before."""
    offsets = 0.2 * (1.0 - np.exp(-np.arange(length) / 6.0))
    return state + offsets[:, None] * np.linspace(-1.0, 1.0, state.shape[0])[None, :]


@pytest.mark.parametrize(("steps", "delay"), [(1, 2), (4, 5), (10, 9)])
def test_real_time_chunking_keeps_the_committed_prefix_and_continues_it(policy, make_images, steps, delay) -> None:
    images, state = observation(policy, make_images)
    policy.num_steps = steps
    try:
        committed = decelerating(state, 20)
        actions = policy.infer(images, state, committed=committed, delay_steps=delay, seed=4).actions
        free = policy.infer(images, state, seed=4).actions
    finally:
        policy.num_steps = policy.manifest.sampling.default_steps
    assert np.abs(actions[:delay] - committed[:delay]).max() <= 1e-4
    largest_committed_step = np.abs(np.diff(committed[:delay], axis=0)).max()
    jump = np.abs(actions[delay] - actions[delay - 1]).max()
    assert jump <= largest_committed_step + 1e-6
    free_jump = np.abs(free[delay] - committed[delay - 1]).max()
    assert free_jump > largest_committed_step, "negative control: without RTC the hand-over jumps"
    assert np.abs(actions - free).max() > 1e-3, "the tail is still the model's own"


def test_guidance_pulls_the_sample_towards_the_previous_chunk(policy, make_images) -> None:
    """Before the hand-over composite, the guided sampler alone moves the weighted overlap closer."""
    images, state = observation(policy, make_images)
    task = policy.task
    committed = decelerating(state, 20)
    guidance = policy._guidance(task, committed, delay_steps=4, state_vector=state)
    features = torch.from_numpy(policy.encode(images, state)).unsqueeze(0)
    with torch.no_grad():
        kv = policy.head.context_kv(features)
    state_tensor = torch.zeros(1, policy.manifest.action_head.state_dim)
    noise = torch.randn(1, *guidance.target.shape[1:], generator=torch.Generator().manual_seed(0))

    def velocity(x, t):
        return policy.head(x, t, state_tensor, *kv)

    def weighted_error(sample: torch.Tensor) -> float:
        return float(((sample - guidance.target) * guidance.weights * task.action_mask).abs().max())

    with torch.no_grad():
        free = euler_sample(velocity, noise, task.action_mask, 10)
        guided = euler_sample(velocity, noise, task.action_mask, 10, guidance)
        zero_weight = Guidance(guidance.target, guidance.weights, max_weight=0.0)
        unguided_weights = euler_sample(velocity, noise, task.action_mask, 10, zero_weight)
    assert weighted_error(guided) < 0.5 * weighted_error(free)
    torch.testing.assert_close(unguided_weights, free)


def test_the_runtime_configs_guidance_limit_reaches_the_sampler(tiny_checkpoint: Path, make_images) -> None:
    """``rtc.guidance_limit``: ``min(beta,K)`` (shipped) and ``beta`` give different guided chunks
    at K = 2, where the first step's weight is 2 against 10; unguided chunks are the same."""
    from qwen_vla_ros.config import load_runtime
    from qwen_vla_ros.model.loading import load_policy_from_config

    chunks = {}
    for limit in ("min(beta,K)", "beta"):
        runtime = load_runtime(None, {"checkpoint": str(tiny_checkpoint), "denoising_steps": 2,
                                      "rtc.guidance_limit": limit})
        loaded = load_policy_from_config(runtime)
        assert loaded.guidance_capped_at_steps == (limit == "min(beta,K)")
        images, state = observation(loaded, make_images)
        committed = decelerating(state, 20)
        chunks[limit] = (loaded.infer(images, state, committed=committed, delay_steps=3, seed=4).actions,
                         loaded.infer(images, state, seed=4).actions)
    assert np.abs(chunks["beta"][0] - chunks["min(beta,K)"][0]).max() > 1e-4, "the cap changes the guided chunk"
    np.testing.assert_array_equal(chunks["beta"][1], chunks["min(beta,K)"][1])


def test_checkpoint_statistics_win_over_the_yaml(tiny_checkpoint: Path, tmp_path: Path, make_images) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    manifest = json.loads((copy / "qwen_vla.json").read_text())
    stats = manifest["embodiments"]["aloha"]["normalization"]
    stats["action"]["mean"] = [m + 1.0 for m in stats["action"]["mean"]]
    (copy / "qwen_vla.json").write_text(json.dumps(manifest))
    original, shifted = load_policy(tiny_checkpoint), load_policy(copy)
    images, state = observation(original, make_images)
    observation(shifted, make_images)
    difference = shifted.infer(images, state, seed=1).actions - original.infer(images, state, seed=1).actions
    np.testing.assert_allclose(difference, 1.0, atol=1e-5)

    stats_free = tmp_path / "no_stats"
    shutil.copytree(tiny_checkpoint, stats_free)
    manifest["embodiments"]["aloha"]["normalization"] = None
    (stats_free / "qwen_vla.json").write_text(json.dumps(manifest))
    fallback = load_policy(stats_free)
    observation(fallback, make_images)
    expected = original.infer(images, state, seed=1).actions
    np.testing.assert_allclose(fallback.infer(images, state, seed=1).actions, expected, atol=1e-6)


def _with_relative_joints(checkpoint: Path, out: Path) -> list[str]:
    """A copy of the checkpoint whose head predicts ALOHA's joints (unit rad in config/aloha.yaml, read here
    as plain YAML) as offsets from the state; returns those channel names."""
    import yaml

    shutil.copytree(checkpoint, out)
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "aloha.yaml").read_text())
    joints = [c["name"] for c in config["action"]["channels"] if c["unit"] == "rad"]
    manifest = json.loads((out / "qwen_vla.json").read_text())
    manifest["embodiments"]["aloha"]["relative_actions"] = joints
    (out / "qwen_vla.json").write_text(json.dumps(manifest))
    return joints


def test_relative_channels_are_offsets_from_the_observed_state(tiny_checkpoint: Path, tmp_path: Path,
                                                               make_images) -> None:
    """The same weights and noise give the same model-space chunk; a relative checkpoint adds the state it was
    given to its joints and leaves the grippers absolute."""
    joints = _with_relative_joints(tiny_checkpoint, tmp_path / "relative")
    absolute, relative = load_policy(tiny_checkpoint), load_policy(tmp_path / "relative")
    images, state = observation(absolute, make_images)
    observation(relative, make_images)
    state = state + np.linspace(-0.3, 0.3, state.shape[0])  # away from the statistics' mean
    names = list(absolute.task.entry.action_channels)
    expected = np.array([state[names.index(n)] if n in joints else 0.0 for n in names])
    difference = relative.infer(images, state, seed=2).actions - absolute.infer(images, state, seed=2).actions
    np.testing.assert_allclose(difference, np.broadcast_to(expected, difference.shape), atol=1e-5)


@pytest.mark.parametrize("delay", [2, 5])
def test_real_time_chunking_continues_the_committed_prefix_of_a_relative_checkpoint(
        tiny_checkpoint: Path, tmp_path: Path, make_images, delay: int) -> None:
    """Committed actions are absolute; the guidance must see them as the head's offsets from the same state,
    normalised with the manifest's own statistics (read from its JSON here)."""
    joints = _with_relative_joints(tiny_checkpoint, tmp_path / "relative")
    relative = load_policy(tmp_path / "relative")
    images, state = observation(relative, make_images)
    committed = decelerating(state, 20)
    entry = json.loads((tmp_path / "relative" / "qwen_vla.json").read_text())["embodiments"]["aloha"]
    stats = entry["normalization"]["action"]
    is_joint = np.array([n in joints for n in entry["action_channels"]])
    expected = (committed - np.where(is_joint, state, 0.0) - stats["mean"]) / stats["std"]
    target = relative._guidance(relative.task, committed, delay, state).target[0, :20].numpy()
    np.testing.assert_allclose(target[:, entry["action_mask"]], expected, atol=1e-5)
    actions = relative.infer(images, state, committed=committed, delay_steps=delay, seed=4).actions
    assert np.abs(actions[:delay] - committed[:delay]).max() <= 1e-4
    largest_committed_step = np.abs(np.diff(committed[:delay], axis=0)).max()
    assert np.abs(actions[delay] - actions[delay - 1]).max() <= largest_committed_step + 1e-6


def test_relative_channels_must_be_action_and_state_channels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_checkpoint, tmp_path / "bad")
    manifest = json.loads((tmp_path / "bad" / "qwen_vla.json").read_text())
    manifest["embodiments"]["aloha"]["relative_actions"] = ["left_elbow", "left_knee"]
    (tmp_path / "bad" / "qwen_vla.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="left_knee"):
        load_policy(tmp_path / "bad")


def test_infer_before_set_task_is_an_error(tiny_checkpoint: Path, make_images) -> None:
    policy = load_policy(tiny_checkpoint)
    with pytest.raises(ValueError, match="no task set"):
        policy.infer(make_images(["cam_high"]), np.zeros(14))
    with pytest.raises(ValueError, match="no task set"):
        policy.encode(make_images(["cam_high"]), np.zeros(14))


def test_unknown_embodiments_are_named(policy, tmp_path: Path) -> None:
    """A name that is neither shipped nor a file is a bad argument; a real config the checkpoint
    was not trained for is the checkpoint's fault."""
    with pytest.raises(InvalidArgumentError, match="unknown embodiment 'spot'"):
        policy.set_task("spot", INSTRUCTION)
    renamed = load_embodiment("widowx").model_copy(update={"name": "widowx_custom"})
    with pytest.raises(CheckpointError, match="'widowx_custom' is not in this checkpoint"):
        policy.set_task(renamed, INSTRUCTION)


def test_a_config_that_disagrees_with_the_checkpoint_is_rejected(policy) -> None:
    config = load_embodiment("aloha", {"control.action_dt": 0.04, "action.mask": list(range(1, 15))})
    with pytest.raises(CheckpointError, match=r"action\.mask is .* in the config .*control\.action_dt is 0\.04"):
        policy.set_task(config, INSTRUCTION)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"state": np.zeros(13)}, "state must have shape (14,)"),
        ({"state": np.full(14, np.nan)}, "state is not finite in channel(s) ['left_waist'"),
        ({"state": ["a"] * 14}, "state must be numeric"),
        ({"committed": np.zeros((5, 13)), "delay_steps": 2}, "committed must have shape (n, 14)"),
        ({"committed": np.zeros((51, 14))}, "1 <= n <= 50"),
        ({"committed": np.zeros((3, 14)), "delay_steps": 4}, "delay_steps 4 exceeds the 3 committed actions"),
        ({"delay_steps": 2}, "no committed actions"),
        ({"committed": np.full((3, 14), np.inf)}, "committed actions are not finite"),
        ({"committed": np.zeros((3, 14)), "delay_steps": -1}, "non-negative integer"),
    ],
)
def test_bad_inputs_are_named(policy, make_images, kwargs, words) -> None:
    images, state = observation(policy, make_images)
    arguments = {"state": state, **kwargs}
    with pytest.raises(PolicyInputError) as raised:
        policy.infer(images, arguments.pop("state"), **arguments)
    assert words in str(raised.value)


def test_bad_images_reach_the_caller_as_errors(policy, make_images) -> None:
    images, state = observation(policy, make_images)
    del images["cam_low"]
    with pytest.raises(PolicyInputError, match="cam_low"):
        policy.infer(images, state)
    images = make_images(policy.task.cameras)
    images["cam_high"] = images["cam_high"].astype(np.int16)
    with pytest.raises(PolicyInputError, match="uint8"):
        policy.infer(images, state)


@pytest.mark.parametrize("steps", [0, 11, 2.5, True])
def test_denoising_steps_must_be_1_to_10(policy, steps) -> None:
    with pytest.raises(InvalidArgumentError, match=r"\[1, 10\]"):
        policy.num_steps = steps


def test_instruction_with_reserved_tokens_is_rejected(policy) -> None:
    with pytest.raises(InvalidArgumentError, match="reserved token"):
        policy.set_task("aloha", "pick <|image_pad|> up")
