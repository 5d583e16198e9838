"""Control-loop pacing: absolute deadlines, late periods run at once, missed ones dropped."""
from __future__ import annotations

import pytest

from qwen_vla_ros.control.pacing import Deadlines

MS = 1_000_000


def test_on_time_periods_sleep_to_absolute_deadlines() -> None:
    deadlines = Deadlines(20 * MS, next_ns=100 * MS)
    assert deadlines.wait_ns(95 * MS) == 5 * MS
    # Woken 1 ms late: the next sleep is shortened, not restarted, so the grid does not drift.
    assert deadlines.wait_ns(101 * MS) == 19 * MS
    assert deadlines.wait_ns(140 * MS) == 0
    assert deadlines.next_ns == 160 * MS and deadlines.skipped == 0


def test_a_late_period_runs_at_once_and_missed_ones_are_dropped_not_bunched() -> None:
    deadlines = Deadlines(20 * MS, next_ns=100 * MS)
    assert deadlines.wait_ns(115 * MS) == 0  # late by less than a period: run now
    assert deadlines.skipped == 0 and deadlines.next_ns == 120 * MS
    # Stalled for 3.5 periods: the deadlines 120, 140 and 160 passed; 180 runs now, then 200.
    assert deadlines.wait_ns(190 * MS) == 0
    assert deadlines.skipped == 3
    assert deadlines.wait_ns(191 * MS) == 9 * MS
    assert deadlines.next_ns == 220 * MS


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        Deadlines(0, next_ns=0)
