"""The demo's pieces that need no ROS: the checkpoint choice and caching, rates, the summary and its verdict."""
from __future__ import annotations

import json
import math

import pytest

from qwen_vla_ros.bringup.demo import (
    RANDOM_WEIGHTS_NOTICE,
    NoCheckpointError,
    Summary,
    achieved_rate,
    count_chunks,
    ensure_checkpoint,
)
from qwen_vla_ros.cli import main as cli_main


def test_random_checkpoint_is_built_once_into_the_user_cache_only_when_asked_for(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    said: list[str] = []
    path, random_weights = ensure_checkpoint(None, size="tiny", say=said.append, random_weights=True)
    assert random_weights and path == tmp_path / "qwen_vla_ros" / "checkpoints" / "tiny"
    assert (path / "qwen_vla.json").is_file() and "building" in said[0]
    stamp = (path / "qwen_vla.json").stat().st_mtime_ns
    again, _ = ensure_checkpoint(None, size="tiny", say=said.append, random_weights=True)
    assert again == path and (path / "qwen_vla.json").stat().st_mtime_ns == stamp and "cached" in said[-1]
    assert ensure_checkpoint(str(path)) == (path, False)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        ensure_checkpoint(str(tmp_path))
    # Without a path: the shipped reference checkpoint where there is one, never random weights unasked.
    assert ensure_checkpoint(None, reference=path, say=said.append) == (path, False) and "reference" in said[-1]
    with pytest.raises(NoCheckpointError, match="--random-weights"):
        ensure_checkpoint(None, reference=tmp_path / "absent")


def test_the_demo_without_a_checkpoint_or_random_weights_exits_2_and_says_what_to_pass(tmp_path, capsys) -> None:
    """This checkout ships no reference checkpoint yet (issue 20 §2): the demo must not start
    random weights silently. Where one is shipped, this test has nothing to refuse."""
    from qwen_vla_ros.paths import reference_checkpoint_dir

    if (reference_checkpoint_dir() / "qwen_vla.json").is_file():
        pytest.skip(f"a reference checkpoint is shipped in {reference_checkpoint_dir()}: nothing to refuse")
    assert cli_main(["demo", "--output", str(tmp_path)]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_a_bad_runtime_override_exits_2_with_its_field_before_anything_starts(tmp_path, capsys) -> None:
    assert cli_main(["demo", "--random-weights", "-r", "study.added_delay_s=9", "--output", str(tmp_path)]) == 2
    assert "study.added_delay_s" in capsys.readouterr().err


def test_rate_and_summary() -> None:
    assert achieved_rate([0, 20_000_000, 40_000_000]) == pytest.approx(50.0)
    assert math.isnan(achieved_rate([5]))
    summary = Summary(ok=True, checkpoint="/c", random_weights=True, chunks=3)
    data = json.loads(summary.as_json())
    assert data["chunks"] == 3 and data["control_rate_hz"] is None
    assert RANDOM_WEIGHTS_NOTICE in summary.text() and "--checkpoint" in RANDOM_WEIGHTS_NOTICE
    assert RANDOM_WEIGHTS_NOTICE not in Summary(ok=True, checkpoint="/c", random_weights=False).text()


def judged(accepted: int, rejected: dict[str, int], dropped: int = 0, moved: float = 0.5) -> Summary:
    summary = Summary(ok=False, checkpoint="/c", random_weights=False, trial_yaml="/t/trial.yaml", moved_rad=moved)
    counts = {"chunks_accepted": accepted, "chunks_rejected": sum(rejected.values()), "chunks_dropped": dropped,
              **{f"rejected_{reason}": n for reason, n in rejected.items()}, "rejected_malformed": 0}
    count_chunks(summary, counts)
    summary.judge()
    return summary


def test_the_demo_passes_only_when_nine_in_ten_chunks_ran_and_moved_the_robot() -> None:
    """The first run of issue 20: 10 chunks, all expired or stale, arms moved < 0.0005 rad, exit 0.
    Each condition fails on its own; the exit rule is 90% executed and a move of 0.01 rad."""
    good = judged(9, {"stale": 1})
    assert good.ok and good.executed_fraction == pytest.approx(0.9) and good.rejections == {"stale": 1}
    first_run = judged(0, {"expired": 6, "stale": 4}, moved=0.0004)
    assert not first_run.ok and len(first_run.shortfalls) == 2
    assert "expired 6" in first_run.text() and "stale 4" in first_run.text() and "0%" in first_run.text()
    assert not judged(8, {"expired": 1}, dropped=1).ok, "a chunk dropped unread was not executed either"
    still = judged(10, {}, moved=0.005)
    assert not still.ok and "moved" in still.shortfalls[0]
    nothing = judged(0, {})
    assert not nothing.ok and math.isnan(nothing.executed_fraction) and "no chunk" in nothing.shortfalls[0]
    data = json.loads(good.as_json())
    assert (data["chunks_accepted"], data["chunks_rejected"], data["executed_fraction"]) == (9, 1, pytest.approx(0.9))
    assert data["rejections"] == {"stale": 1} and data["moved_rad"] == 0.5 and data["shortfalls"] == []
    assert json.loads(nothing.as_json())["executed_fraction"] is None
