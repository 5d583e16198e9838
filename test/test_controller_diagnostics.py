"""The controller's diagnostics status (control.diagnostics): merged figures and the level per mode."""
from __future__ import annotations

import pytest

from qwen_vla_ros.control.diagnostics import controller_status
from qwen_vla_ros.health import Level

GATE = {"gate_pid": 42, "gate_alive": True, "gate_failures": 0, "gate_dropped": 3}


def loop(mode: str, policy_losses: int = 0) -> dict[str, object]:
    return {"mode": mode, "policy_losses": policy_losses, "chunks_dropped": 2, "chunks_accepted": 7}


@pytest.mark.parametrize(("mode", "losses", "level"), [
    ("running", 0, Level.OK),
    ("holding", 0, Level.OK),
    ("waiting", 0, Level.WARN),
    ("stale", 0, Level.WARN),
    ("estop", 0, Level.ERROR),
    ("policy_lost", 0, Level.WARN),  # never heard from: still starting up
    ("policy_lost", 1, Level.ERROR),  # went silent
])
def test_each_mode_earns_its_level(mode: str, losses: int, level: Level) -> None:
    assert controller_status(loop(mode, losses), {}, GATE)[1] == level


def test_figures_are_merged_and_chunks_the_gate_dropped_count_as_dropped() -> None:
    status, _ = controller_status(loop("running"), {"clock_offset_ms_policy": 1.5}, GATE)
    assert status["chunks_dropped"] == 2 + 3
    assert status["chunks_accepted"] == 7 and status["clock_offset_ms_policy"] == 1.5 and status["gate_pid"] == 42
