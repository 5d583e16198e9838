"""The execution-strategy study runner (bench/strategy_study.py): its measures on known signals,
its strategies as valid runtime configs, and one tiny real run (one strategy, one delay, one
trial, the tiny random checkpoint) through ``qwen-vla-ros eval`` and the whole ROS graph."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.strategy_study import STRATEGIES, Row, jerk, markdown
from qwen_vla_ros.config import load_runtime, parse_override

REPO = Path(__file__).resolve().parent.parent


def test_jerk_of_a_cubic_is_its_third_derivative_and_a_step_is_seen() -> None:
    stamps = np.arange(50) * 0.02
    cubic = np.stack([2.0 * stamps**3, -0.5 * stamps**3 + stamps], axis=1)
    np.testing.assert_allclose(jerk(stamps, cubic), np.broadcast_to([12.0, 3.0], (47, 2)), rtol=1e-6)
    step = np.zeros((10, 1))
    step[5:] = 0.1
    assert jerk(stamps[:10], step).max() == pytest.approx(2 * 0.1 / 0.02**3)  # d3 of a step: (1, -2, 1) x height
    assert jerk(stamps[:3], step[:3]).size == 0


def test_every_strategy_is_a_valid_runtime_config_of_the_kind_it_names() -> None:
    """Validated by the same loader the nodes use: a misspelt key or value fails here, not mid-study."""
    configs = {name: load_runtime(None, dict(parse_override(o) for o in overrides))
               for name, overrides in STRATEGIES.items()}
    assert configs["synchronous"].execution == "synchronous" and not configs["synchronous"].rtc.enabled
    assert {configs[n].execution for n in ("hard_switch", "crossfade", "rtc", "rtc_beta")} == {"asynchronous"}
    assert configs["hard_switch"].blending.method == "latest" and configs["crossfade"].blending.method == "crossfade"
    assert configs["rtc"].rtc.enabled and configs["rtc"].rtc.guidance_limit == "min(beta,K)"
    assert configs["rtc_beta"].rtc.guidance_limit == "beta"
    assert all(config.study.added_delay_s == 0.0 for config in configs.values()), "delays come from --delays-ms"


def test_the_table_names_each_run_and_the_command() -> None:
    rows = [Row("rtc", 200, 10, 7, 0.7, [0.4, 0.89], 812.4, 40, 2, 11.25),
            Row("synchronous", 0, 10, 0, 0.0, [0.0, 0.28], None, 10, 0, None, problems=["x"])]
    text = markdown(rows, "python -m bench.strategy_study --trials 10", (1.0, 2.0, 3.0))
    assert "| rtc | 200 | 7/10 | 0.40–0.89 | 812 | 2 of 42 | 11.2 |" in text
    assert "| synchronous | 0 | 0/10 | 0.00–0.28 | n/a | 0 of 10 | n/a |" in text
    assert "`python -m bench.strategy_study --trials 10`" in text and "1.00, 2.00, 3.00" in text
    assert "- synchronous +0 ms: x" in text


@pytest.mark.ros
@pytest.mark.slow
def test_a_tiny_study_runs_eval_with_the_delay_and_writes_table_plot_and_json(tmp_path, tiny_checkpoint,
                                                                              ros_domain) -> None:
    """The synchronous strategy at an added delay of 1 s, one 5 s trial: every chunk in the trial's
    bag was recorded at least 1 s after its observation stamp (the bag's log time, the recorder's
    clock), so the delay reached the policy node; the controller still executed chunks, which
    asynchronous execution would refuse as expired (a 50-action chunk spans 0.98 s); the table,
    plot and JSON are written. Without the hold (broken on purpose) this test failed with chunk ages
    of 0.40 to 0.60 s at load 12 on 2 cores."""
    pytest.importorskip("rosbags", reason="rosbags is not installed: pip install '.[recording]'")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install '.[recording]'")
    from rosbags.highlevel import AnyReader

    output = tmp_path / "study"
    env = dict(ros_domain.env, HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [sys.executable, "-m", "bench.strategy_study", "--checkpoint", str(tiny_checkpoint), "--trials", "1",
         "--strategies", "synchronous", "--delays-ms", "1000", "--timeout", "5", "--success", "lifted",
         "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=500,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (row,) = data["rows"]
    assert (row["strategy"], row["delay_ms"], row["trials"], row["exit_code"]) == ("synchronous", 1000, 1, 0)
    assert row["chunks_accepted"] >= 1, row
    assert row["wilson_95"] is not None and row["jerk_p99"] is not None and np.isfinite(row["jerk_p99"])
    assert (output / "study.png").stat().st_size > 0 and "| synchronous | 1000 | " in (output / "study.md").read_text()
    bags = list((output / "synchronous_1000ms").glob("trials/*/bag"))
    assert len(bags) == 1
    with AnyReader(bags) as reader:
        connections = [c for c in reader.connections if c.topic == "/qwen_vla/action_chunk"]
        ages = [(logged - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e9
                for c, logged, raw in reader.messages(connections=connections)
                for m in [reader.deserialize(raw, c.msgtype)]]
    assert ages and min(ages) >= 1.0, f"chunk ages at the recorder {np.round(ages, 3)}"
