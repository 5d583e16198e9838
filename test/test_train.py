"""``qwen-vla-ros train`` on a tiny synthetic LeRobot dataset: the flow-matching loss falls, and the
saved checkpoint loads with the runtime's loader and infers a chunk. Real model code (a random
``tiny`` checkpoint from the real builder), real LeRobot files written by the export's writer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install '.[recording]'")
pytest.importorskip("cv2", reason="opencv is not installed: pip install opencv-python-headless")
pytestmark = pytest.mark.slow  # about 40 s of CPU: the tiny backbone encodes every frame, then 40 steps

from helpers.datasets import ALOHA, START, STEPS, synthetic_actions, synthetic_dataset  # noqa: E402

from qwen_vla_ros.cli import main as cli_main  # noqa: E402


def test_training_lowers_the_loss_and_the_checkpoint_loads(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from qwen_vla_ros.model.build import make_checkpoint
    from qwen_vla_ros.model.loading import load_policy

    synthetic_dataset(tmp_path / "data")
    out = tmp_path / "trained"
    assert cli_main(["train", "--dataset", str(tmp_path / "data"), "--size", "tiny", "--output", str(out),
                     "--steps", "40", "--batch-size", "6", "--lr", "1e-3", "--seed", "3"]) == 0
    record = json.loads((out / "training.json").read_text())
    losses = record["losses"]
    assert len(losses) == 40 and record["frames"] == STEPS
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the training curve is a PNG"
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    # The head was trained (weights differ from the random start built with the same seed) ...
    fresh = make_checkpoint("tiny", tmp_path / "fresh", seed=3)
    trained, start = load_file(str(out / "action_head.safetensors")), load_file(str(fresh / "action_head.safetensors"))
    assert trained.keys() == start.keys()
    assert any(not np.allclose(trained[k].numpy(), start[k].numpy()) for k in trained)
    # ... and the runtime's loader takes the result.
    policy = load_policy(out)
    policy.set_task(ALOHA, "hand the cube over")
    images = {c.name: np.full((24, 32, 3), 100, np.uint8) for c in ALOHA.cameras}
    chunk = policy.infer(images, START, seed=0)
    assert chunk.actions.shape == (ALOHA.control.chunk_length, 14) and np.all(np.isfinite(chunk.actions))


def test_the_trained_checkpoint_predicts_joints_as_offsets_with_the_datasets_own_statistics(tmp_path: Path) -> None:
    """The manifest's relative channels are config/aloha.yaml's joints (unit rad, read as plain YAML), and its
    statistics are those of the dataset's chunks, computed here from the rows the synthetic dataset wrote:
    action[t + k] - state[t] for joints, action[t + k] for grippers, the last row repeated past the end."""
    import yaml

    synthetic_dataset(tmp_path / "data")
    out = tmp_path / "trained"
    assert cli_main(["train", "--dataset", str(tmp_path / "data"), "--size", "tiny", "--output", str(out),
                     "--steps", "2", "--batch-size", "4", "--seed", "0"]) == 0
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "aloha.yaml").read_text())
    channels = config["action"]["channels"]
    joints = np.array([c["unit"] == "rad" for c in channels])
    entry = json.loads((out / "qwen_vla.json").read_text())["embodiments"]["aloha"]
    assert entry["relative_actions"] == [c["name"] for c in channels if c["unit"] == "rad"]
    actions = synthetic_actions()  # the dataset's states are these same rows
    horizon = config["control"]["chunk_length"]
    chunks = np.stack([actions[np.minimum(np.arange(t, t + horizon), STEPS - 1)] - np.where(joints, actions[t], 0.0)
                       for t in range(STEPS)]).reshape(-1, 14)
    stats = entry["normalization"]
    np.testing.assert_allclose(stats["action"]["mean"], chunks.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], np.maximum(chunks.std(axis=0), 0.02), atol=1e-5)
    np.testing.assert_allclose(stats["state"]["mean"], actions.mean(axis=0), atol=1e-5)
    absolute = tmp_path / "absolute"
    assert cli_main(["train", "--dataset", str(tmp_path / "data"), "--size", "tiny", "--output", str(absolute),
                     "--steps", "2", "--batch-size", "4", "--seed", "0", "--absolute-actions"]) == 0
    assert json.loads((absolute / "qwen_vla.json").read_text())["embodiments"]["aloha"]["relative_actions"] == []


def test_training_the_vision_tower_changes_it_and_nothing_else_in_the_backbone(tmp_path: Path) -> None:
    """--train-vision: the tower's weights move, the language model's stay bit for bit (its cached prefix stays
    valid), the loss falls, and transformers still loads the saved backbone for the runtime."""
    from safetensors.torch import load_file

    from qwen_vla_ros.model.build import make_checkpoint
    from qwen_vla_ros.model.loading import load_policy

    synthetic_dataset(tmp_path / "data")
    out = tmp_path / "trained"
    assert cli_main(["train", "--dataset", str(tmp_path / "data"), "--size", "tiny", "--output", str(out),
                     "--steps", "30", "--batch-size", "4", "--lr", "1e-3", "--seed", "3", "--train-vision"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["train_vision"] is True
    assert np.mean(record["losses"][-6:]) < 0.8 * np.mean(record["losses"][:6]), record["losses"]
    fresh = make_checkpoint("tiny", tmp_path / "fresh", seed=3)
    trained = load_file(str(out / "backbone" / "model.safetensors"))
    start = load_file(str(fresh / "backbone" / "model.safetensors"))
    assert trained.keys() == start.keys()
    moved = {k for k in trained if not np.array_equal(trained[k].numpy(), start[k].numpy())}
    assert moved and all(".visual." in k for k in moved), sorted(moved)[:5]
    policy = load_policy(out)
    policy.set_task(ALOHA, "hand the cube over")
    images = {c.name: np.full((24, 32, 3), 100, np.uint8) for c in ALOHA.cameras}
    assert np.all(np.isfinite(policy.infer(images, START, seed=0).actions))


def test_train_refuses_a_directory_that_is_not_a_dataset(tmp_path: Path, capsys) -> None:
    assert cli_main(["train", "--dataset", str(tmp_path), "--output", str(tmp_path / "out"), "--steps", "1"]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err


def test_object_targets_are_each_episodes_starting_place_for_its_early_rows(tmp_path: Path) -> None:
    """The mapping behind --object-positions, judged by hand: episode n is trial ``t<n>`` (episodes.yaml, written
    here as the export writes it), the collect summary puts trial t<n> at x = n/10, and a row is known when its
    frame index over the dataset's 50 fps (ALOHA's control rate, config/aloha.yaml) is under the cut-off."""
    import yaml

    from qwen_vla_ros.model.training import object_targets, read_lerobot

    synthetic_dataset(tmp_path / "data", episodes=3)
    (tmp_path / "data" / "episodes.yaml").write_text(yaml.safe_dump(
        [{"episode": f"episode_{n}", "trial": f"t{n}"} for n in range(3)]))
    summary = tmp_path / "collect.json"
    summary.write_text("starting...\n" + json.dumps({"trials": [
        {"trial_id": f"t{n}", "conditions": {"object_pose": [n / 10, 0.5, 0.05, 0.0]}} for n in (2, 0, 1)]}))
    frames = read_lerobot(tmp_path / "data", ALOHA.control.chunk_length, stride=2)
    targets = object_targets(tmp_path / "data", frames, summary, seconds=0.09)
    rows = np.arange(3 * STEPS)[::2]
    assert targets.xy.tolist() == [[(r // STEPS) / 10, 0.5] for r in rows]
    assert targets.known.tolist() == [(r % STEPS) / 50.0 < 0.09 for r in rows]
    summary.write_text(json.dumps({"trials": [{"trial_id": "t0", "conditions": {"object_pose": [0, 0.5, 0, 0]}}]}))
    with pytest.raises(Exception, match="no object pose for t1, t2"):
        object_targets(tmp_path / "data", frames, summary, seconds=0.09)


def test_training_with_object_targets_teaches_the_tower_where_the_object_is(tmp_path: Path, capsys) -> None:
    """--object-positions: the readout's loss falls (from the step features it learns to tell the square's two
    places apart), and is recorded beside the action loss; without --train-vision the option is refused, exit 2."""
    import yaml

    synthetic_dataset(tmp_path / "data", episodes=5)
    (tmp_path / "data" / "episodes.yaml").write_text(yaml.safe_dump(
        [{"episode": f"episode_{n}", "trial": f"t{n}"} for n in range(5)]))
    (tmp_path / "collect.json").write_text(json.dumps({"trials": [
        {"trial_id": f"t{n}", "conditions": {"object_pose": [0.1 if n % 2 else -0.1, 0.5, 0.05, 0.0]}}
        for n in range(1, 5)] + [{"trial_id": "t0", "conditions": {"object_pose": [0.0, 0.5, 0.05, 0.0]}}]}))
    base = ["train", "--dataset", str(tmp_path / "data"), "--size", "tiny", "--steps", "40", "--batch-size", "8",
            "--lr", "1e-3", "--seed", "3", "--object-positions", str(tmp_path / "collect.json")]
    assert cli_main([*base, "--output", str(tmp_path / "refused")]) == 2
    assert "--object-positions trains the vision tower: add --train-vision" in capsys.readouterr().err
    out = tmp_path / "trained"
    assert cli_main([*base, "--output", str(out), "--train-vision", "--object-seconds", "1.0"]) == 0
    record = json.loads((out / "training.json").read_text())
    object_losses = record["object_losses"]
    assert len(object_losses) == 40 and record["object_weight"] == 1.0 and record["object_seconds"] == 1.0
    assert np.mean(object_losses[-8:]) < 0.5 * np.mean(object_losses[:8]), object_losses
