"""The controller's diagnostics status: the loop's, the heartbeat's and the chunk gate's figures
as one, and the level its mode earns (docs/safety.md says what each mode means)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwen_vla_ros.health import Level

MODE_LEVELS = {"estop": Level.ERROR, "stale": Level.WARN, "waiting": Level.WARN}


def controller_status(loop: Mapping[str, Any], heartbeat: Mapping[str, Any],
                      gate: Mapping[str, Any]) -> tuple[dict[str, Any], Level]:
    """(figures, level). Chunks the gate dropped unread count as dropped: newer ones took their place."""
    status = {**loop, **heartbeat, **gate}
    status["chunks_dropped"] = loop["chunks_dropped"] + gate["gate_dropped"]
    mode = str(status["mode"])
    if mode == "policy_lost":  # never heard from (starting up) is a warning; a policy that went silent an error
        return status, Level.ERROR if status["policy_losses"] else Level.WARN
    return status, MODE_LEVELS.get(mode, Level.OK)
