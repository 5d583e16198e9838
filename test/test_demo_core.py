"""The demo's pieces that need no ROS: checkpoint caching, rates, the summary."""
from __future__ import annotations

import json
import math

import pytest

from qwen_vla_ros.bringup.demo import RANDOM_WEIGHTS_NOTICE, Summary, achieved_rate, ensure_checkpoint


def test_random_checkpoint_is_built_once_into_the_user_cache(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    said: list[str] = []
    path, random_weights = ensure_checkpoint(None, size="tiny", say=said.append)
    assert random_weights and path == tmp_path / "qwen_vla_ros" / "checkpoints" / "tiny"
    assert (path / "qwen_vla.json").is_file() and "building" in said[0]
    stamp = (path / "qwen_vla.json").stat().st_mtime_ns
    again, _ = ensure_checkpoint(None, size="tiny", say=said.append)
    assert again == path and (path / "qwen_vla.json").stat().st_mtime_ns == stamp and "cached" in said[-1]
    assert ensure_checkpoint(str(path)) == (path, False)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        ensure_checkpoint(str(tmp_path))


def test_rate_and_summary() -> None:
    assert achieved_rate([0, 20_000_000, 40_000_000]) == pytest.approx(50.0)
    assert math.isnan(achieved_rate([5]))
    summary = Summary(ok=True, checkpoint="/c", random_weights=True, chunks=3)
    data = json.loads(summary.as_json())
    assert data["chunks"] == 3 and data["control_rate_hz"] is None
    assert RANDOM_WEIGHTS_NOTICE in summary.text() and "--checkpoint" in RANDOM_WEIGHTS_NOTICE
    assert RANDOM_WEIGHTS_NOTICE not in Summary(ok=True, checkpoint="/c", random_weights=False).text()
