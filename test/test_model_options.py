"""Options of the model commands (make-checkpoint, bench, train) and of the dataset export that
cannot be used raise InvalidArgumentError, which the CLI turns into exit code 2 with the message
(the exit codes themselves are held in test_model_checkpoint, test_model_bench and test_train)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")

from qwen_vla_ros.cli import build_parser  # noqa: E402
from qwen_vla_ros.errors import InvalidArgumentError  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["make-checkpoint", "--size", "tiny"], "needs an output directory"),
        (["bench", "--runs", "1"], "exactly one of --checkpoint DIR or --size"),
        (["bench", "--size", "tiny", "--backend", "onnxruntime"], "exports a checkpoint"),
        (["train", "--dataset", "nowhere", "--output", "out", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_command_options_that_cannot_be_used_are_argument_errors(argv: list[str], words: str) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(InvalidArgumentError, match=words):
        args.handler(args)


def test_model_building_options_are_argument_errors(tmp_path: Path) -> None:
    from qwen_vla_ros.model.bench import bench_embodiment
    from qwen_vla_ros.model.build import build_model, make_checkpoint

    with pytest.raises(InvalidArgumentError, match="size must be one of"):
        build_model("huge", device="meta")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="is not empty"):
        make_checkpoint("tiny", tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"--cameras must be in \[1, 4\]"):
        bench_embodiment("aloha", 5)


def test_dataset_export_options_are_argument_errors(tmp_path: Path) -> None:
    pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")
    from qwen_vla_ros.recording.export import export_trials

    with pytest.raises(InvalidArgumentError, match="unknown export format 'csv'"):
        export_trials(tmp_path, tmp_path / "out", format="csv")
    with pytest.raises(InvalidArgumentError, match="JPEG quality must be 1..100"):
        export_trials(tmp_path, tmp_path / "out", jpeg_quality=0)
