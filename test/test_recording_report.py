"""Trial reports from a synthetic index: rates, Wilson intervals (computed here with scipy),
interventions per trial, mean durations; Markdown, PNG and the printed table."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from scipy.stats import binomtest

from qwen_vla_ros.cli import main as cli_main
from qwen_vla_ros.recording.report import build_report, wilson_interval
from qwen_vla_ros.recording.trial import load_index


def _entry(n: int, lighting: str, background: str, outcome: str | None, interventions: int, duration: float) -> dict:
    return {"id": f"trial_{n:04d}", "path": f"trials/trial_{n:04d}", "condition": {"lighting": lighting, "background": background},
            "outcome": outcome, "interventions": interventions, "duration_s": duration}


def _synthetic_index(root: Path) -> list[dict]:
    trials = []
    # bright/plain: 7 successes of 10, 1 intervention each on the failures, 20 s each
    for i in range(10):
        trials.append(_entry(len(trials) + 1, "bright", "plain", "success" if i < 7 else "failure", 0 if i < 7 else 1, 20.0))
    # dim/plain: 2 of 8, durations 30 + i, 2 interventions on every trial; plus an abort and a crash
    for i in range(8):
        trials.append(_entry(len(trials) + 1, "dim", "plain", "success" if i < 2 else "failure", 2, 30.0 + i))
    trials.append(_entry(len(trials) + 1, "dim", "plain", "aborted", 5, 3.0))
    trials.append(_entry(len(trials) + 1, "dim", "plain", "incomplete", 4, 9.0))
    # bright/clutter: 0 of 4
    for _ in range(4):
        trials.append(_entry(len(trials) + 1, "bright", "clutter", "failure", 0, 40.0))
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.yaml").write_text(yaml.safe_dump({
        "protocol": "ood", "factors": {"lighting": ["bright", "dim", "colored"], "background": ["plain", "clutter"]},
        "trials": trials,
    }, sort_keys=False))
    return trials


def _scipy_wilson(successes: int, trials: int) -> tuple[float, float]:
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high


@pytest.mark.parametrize("successes, trials", [(0, 1), (1, 1), (7, 10), (2, 8), (0, 4), (9, 22), (50, 50)])
def test_wilson_interval_matches_scipy(successes: int, trials: int) -> None:
    assert wilson_interval(successes, trials) == pytest.approx(_scipy_wilson(successes, trials), abs=1e-12)


def test_wilson_interval_always_holds_the_observed_rate() -> None:
    """The bounds hold the rate itself exactly, never off by rounding: at 0 of 10 the lower bound
    came out as 1e-17, a negative error bar that made matplotlib refuse an all-failure eval's plot."""
    for trials in range(1, 61):
        for successes in range(trials + 1):
            low, high = wilson_interval(successes, trials)
            assert low <= successes / trials <= high, (successes, trials, low, high)


def test_an_evaluation_where_every_trial_failed_still_plots(tmp_path: Path) -> None:
    from qwen_vla_ros.recording.report import plot

    root = tmp_path / "trials"
    root.mkdir()
    trials = [_entry(n, "bright", "plain", "failure", 0, 20.0) for n in range(1, 11)]
    (root / "index.yaml").write_text(yaml.safe_dump({"protocol": "ood", "factors": {"lighting": ["bright"]},
                                                     "trials": trials}, sort_keys=False))
    plot(build_report(load_index(root)), tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_report_computes_known_numbers(tmp_path: Path) -> None:
    _synthetic_index(tmp_path)
    report = build_report(load_index(tmp_path))
    overall = report.overall
    assert (overall.trials, overall.successes, overall.aborted, overall.incomplete) == (22, 9, 1, 1)
    assert overall.rate == pytest.approx(9 / 22)
    assert overall.interval == pytest.approx(_scipy_wilson(9, 22))
    assert overall.interventions_per_trial == pytest.approx((3 * 1 + 8 * 2) / 22)
    assert overall.mean_duration_s == pytest.approx((10 * 20 + sum(30 + i for i in range(8)) + 4 * 40) / 22)

    lighting = {g.label: g for g in report.factors["lighting"]}
    assert list(lighting) == ["bright", "dim", "colored"], "levels keep the protocol's order, unused ones included"
    assert (lighting["bright"].trials, lighting["bright"].successes) == (14, 7)
    assert lighting["bright"].interval == pytest.approx(_scipy_wilson(7, 14))
    assert (lighting["dim"].trials, lighting["dim"].successes, lighting["dim"].aborted, lighting["dim"].incomplete) == (8, 2, 1, 1)
    assert lighting["dim"].interventions_per_trial == pytest.approx(2.0)
    assert lighting["dim"].mean_duration_s == pytest.approx(33.5)
    assert lighting["colored"].trials == 0 and lighting["colored"].rate is None and lighting["colored"].interval is None
    background = {g.label: g for g in report.factors["background"]}
    assert (background["clutter"].trials, background["clutter"].successes) == (4, 0)
    assert background["clutter"].interval == pytest.approx(_scipy_wilson(0, 4))
    conditions = {g.label: (g.trials, g.successes) for g in report.conditions}
    assert conditions == {"lighting=bright, background=plain": (10, 7), "lighting=dim, background=plain": (8, 2),
                          "lighting=bright, background=clutter": (4, 0)}


def test_report_command_writes_markdown_and_png_and_prints_the_table(tmp_path: Path, capsys) -> None:
    _synthetic_index(tmp_path / "run")
    assert cli_main(["trials", "report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    low, high = _scipy_wilson(7, 10)
    row = f"| lighting=bright, background=plain | 10 | 7 | 70.0% | {100 * low:.1f}%–{100 * high:.1f}% | 0.30 | 20.0 | 0 | 0 |"
    assert row in printed
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert row in markdown and "## By lighting" in markdown and "![success rate by factor level](report.png)" in markdown
    from matplotlib.image import imread

    image = imread(tmp_path / "out" / "report.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300


def test_report_on_a_directory_without_index_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli_main(["trials", "report", str(tmp_path)]) == 2
    assert "no trial index here" in capsys.readouterr().err
    (tmp_path / "index.yaml").write_text("trials:\n  - id: t\n    outcome: won\n")
    assert cli_main(["trials", "report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "trials[0].path: required field is missing" in error and "trials[0].outcome" in error
