"""``qwen-vla-ros bench`` reports every stage and, with --compare naive, a baseline that computes
the same actions the slow way. Timings are printed, never asserted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from qwen_vla_ros.cli import main as cli_main  # noqa: E402


def test_bench_json_has_every_stage_and_the_naive_baseline(tiny_checkpoint: Path, capsys) -> None:
    args = ["bench", "--checkpoint", str(tiny_checkpoint), "--json", "--runs", "3", "--warmup", "1",
            "--compare", "naive", "--steps", "2", "--cameras", "2"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    stages = report["stages"]
    for stage in ("preprocess", "vision", "backbone_step", "context_kv", "total"):
        assert stages[stage]["count"] == 3 and stages[stage]["p99_ms"] >= stages[stage]["p50_ms"] > 0
    assert stages["dit_step"]["count"] == 3 * 2
    assert report["cameras"] == 2 and report["denoising_steps"] == 2
    assert report["memory"]["host_peak_rss_mb"] > 0
    assert report["baseline"]["name"] == "naive" and report["baseline"]["stages"]["total"]["count"] == 3
    assert report["speedup_p50"] > 0
    # the baseline is the same computation: same seed, same actions
    assert report["baseline"]["max_abs_action_diff"] < 1e-4


def test_bench_needs_exactly_one_model_source(capsys) -> None:
    assert cli_main(["bench", "--runs", "1"]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err


def test_bench_human_report_on_weights_built_in_memory(capsys) -> None:
    """--size builds random weights without a checkpoint directory (how `full` is timed on a GPU)."""
    assert cli_main(["bench", "--size", "tiny", "--runs", "1", "--warmup", "0", "--embodiment", "mobile_base"]) == 0
    out = capsys.readouterr().out
    assert "random tiny (in memory)" in out and "mobile_base 1 camera(s)" in out and "backbone_step" in out


def test_bench_times_real_time_chunking(tiny_checkpoint: Path, capsys) -> None:
    """--rtc-delay commits a previous chunk; the guided policy and the guided naive path agree."""
    args = ["bench", "--checkpoint", str(tiny_checkpoint), "--json", "--runs", "2", "--warmup", "0",
            "--compare", "naive", "--steps", "2", "--rtc-delay", "5"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rtc_delay_steps"] == 5 and report["stages"]["dit_step"]["count"] == 2 * 2
    assert report["baseline"]["max_abs_action_diff"] < 1e-4
    assert cli_main(["bench", "--checkpoint", str(tiny_checkpoint), "--embodiment", "widowx", "--rtc-delay", "3"]) == 2
    assert "--rtc-delay must lie in [1, 2]" in capsys.readouterr().err


def test_the_gpu_bench_driver_reports_every_case_it_was_written_for() -> None:
    """``python -m bench.gpu`` is the single device call's benchmark; here it runs tiny on CPU
    (eager on both sides), which checks the cases and the reports, not the GPU."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--size", "tiny", "--device", "cpu", "--runs", "2",
                           "--warmup", "1"], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["cameras"], r["rtc_delay_steps"]) for r in reports] == [(1, 0), (3, 0), (3, 10)]
    for report in reports:
        assert report["baseline"]["name"] == "torch" and report["stages"]["total"]["count"] == 2
        assert report["baseline"]["max_abs_action_diff"] < 1e-4
