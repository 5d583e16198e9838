"""Success rates of a protocol the way a paper's table reports them.

Rates count trials with a verdict (success or failure); aborted and incomplete trials are
listed beside them but never enter a rate, an intervention count or a mean duration. Every
rate carries a Wilson score 95% interval, which stays inside [0, 1] and is honest at the
small trial counts real-robot evaluations have.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qwen_vla_ros.recording.trial import VERDICTS, IndexEntry, TrialIndex

Z_95 = statistics.NormalDist().inv_cdf(0.975)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    if trials <= 0:
        raise ValueError("a confidence interval needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes ({successes}) must lie in 0..trials ({trials})")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # At no successes the lower bound is exactly 0 (and at all successes the upper exactly 1), but
    # the subtraction leaves rounding (1e-17) that would put the bound on the wrong side of the rate.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class GroupStats:
    label: str
    trials: int
    successes: int
    aborted: int
    incomplete: int
    interventions_per_trial: float | None
    mean_duration_s: float | None

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.trials) if self.trials else None


def group_stats(label: str, entries: Sequence[IndexEntry]) -> GroupStats:
    judged = [e for e in entries if e.outcome in VERDICTS]
    durations = [e.duration_s for e in judged if e.duration_s is not None]
    return GroupStats(
        label=label,
        trials=len(judged),
        successes=sum(e.outcome == "success" for e in judged),
        aborted=sum(e.outcome == "aborted" for e in entries),
        incomplete=sum(e.outcome in ("incomplete", None) for e in entries),
        interventions_per_trial=statistics.fmean(e.interventions for e in judged) if judged else None,
        mean_duration_s=statistics.fmean(durations) if durations else None,
    )


@dataclass(frozen=True)
class Report:
    protocol: str | None
    overall: GroupStats
    factors: dict[str, list[GroupStats]]
    conditions: list[GroupStats]


def _ordered_levels(index: TrialIndex, factor: str) -> list[str]:
    declared = index.factors.get(factor, [])
    seen = sorted({e.condition[factor] for e in index.trials if factor in e.condition} - set(declared))
    return [*declared, *seen]


def build_report(index: TrialIndex) -> Report:
    entries = index.trials
    factor_names = [*index.factors, *sorted({k for e in entries for k in e.condition} - set(index.factors))]
    factors = {
        name: [
            group_stats(level, [e for e in entries if e.condition.get(name) == level])
            for level in _ordered_levels(index, name)
        ]
        for name in factor_names
    }
    conditions: dict[str, list[IndexEntry]] = {}
    for entry in entries:
        conditions.setdefault(condition_label(entry.condition, factor_names), []).append(entry)
    return Report(
        protocol=index.protocol,
        overall=group_stats("overall", entries),
        factors=factors,
        conditions=[group_stats(label, group) for label, group in conditions.items()],
    )


def condition_label(condition: dict[str, str], order: Iterable[str]) -> str:
    return ", ".join(f"{name}={condition[name]}" for name in order if name in condition) or "(none)"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


HEADER = ("trials", "success", "rate", "95% CI", "interventions/trial", "mean duration (s)", "aborted", "incomplete")


def _row(stats: GroupStats) -> list[str]:
    interval = stats.interval
    return [
        stats.label,
        str(stats.trials),
        str(stats.successes),
        _percent(stats.rate),
        "–" if interval is None else f"{_percent(interval[0])}–{_percent(interval[1])}",
        _number(stats.interventions_per_trial, 2),
        _number(stats.mean_duration_s, 1),
        str(stats.aborted),
        str(stats.incomplete),
    ]


def _table(first_column: str, rows: Sequence[GroupStats]) -> list[str]:
    lines = [f"| {first_column} | " + " | ".join(HEADER) + " |", "|" + "---|" * (len(HEADER) + 1)]
    lines += ["| " + " | ".join(_row(stats)) + " |" for stats in rows]
    return lines


def to_markdown(report: Report, chart: str | None = None) -> str:
    overall = report.overall
    lines = [
        f"# Trial report: {report.protocol or 'trials without a protocol'}",
        "",
        f"{overall.trials + overall.aborted + overall.incomplete} trials recorded: {overall.successes} success, "
        f"{overall.trials - overall.successes} failure, {overall.aborted} aborted, {overall.incomplete} incomplete. "
        "Rates, interventions and durations count success and failure only; intervals are Wilson score 95%.",
        "",
        *_table("", [overall]),
    ]
    for factor, levels in report.factors.items():
        lines += ["", f"## By {factor}", "", *_table(factor, levels)]
    if report.factors:
        lines += ["", "## By condition", "", *_table("condition", report.conditions)]
    if chart:
        lines += ["", f"![success rate by factor level]({chart})"]
    return "\n".join(lines) + "\n"


def _error_bar(group: GroupStats) -> tuple[float, float]:
    """How far the Wilson interval reaches below and above the rate; none for a group without trials."""
    rate, interval = group.rate, group.interval
    if rate is None or interval is None:
        return 0.0, 0.0
    return rate - interval[0], interval[1] - rate


def plot(report: Report, path: Path) -> None:
    """Success rate per factor level with Wilson 95% error bars, one panel per factor."""
    from matplotlib.figure import Figure

    panels = [("overall", [report.overall])] + list(report.factors.items())
    widths = [len(groups) + 0.5 for _, groups in panels]
    figure = Figure(figsize=(2.0 + 1.1 * sum(widths), 4.2))
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for axis, (title, groups) in zip(axes, panels, strict=True):
        rates = [g.rate or 0.0 for g in groups]
        bars = [_error_bar(g) for g in groups]
        errors = [[below for below, _ in bars], [above for _, above in bars]]
        positions = range(len(groups))
        axis.bar(positions, rates, width=0.6, yerr=errors, capsize=4, color="#4878a8")
        axis.set_xticks(list(positions), [f"{g.label}\n(n={g.trials})" for g in groups], rotation=30, ha="right")
        axis.set_title(title)
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("success rate (Wilson 95% CI)")
    figure.suptitle(f"Trial report: {report.protocol or 'trials without a protocol'}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
