"""Real-time chunking schedules (Black, Galliker, Levine: "Real-Time Execution of Action
Chunking Flow Policies", 2025), torch-free.

While a chunk is being computed the robot keeps executing the previous one. The new chunk
is inpainted: actions that execute during the inference delay are frozen (weight 1), the
rest of the overlap with the previous chunk is guided towards it with exponentially
decaying weight, and the tail is free (weight 0). Flow time runs from 0 (noise) to 1
(actions).
"""
from __future__ import annotations

import math

import numpy as np


def prefix_weights(delay_steps: int, overlap: int, horizon: int) -> np.ndarray:
    """Soft mask W over the new chunk's ``horizon`` actions.

    W_i = 1 for i < d; c_i (e^{c_i} - 1) / (e - 1) with c_i = (overlap - i) / (overlap - d + 1)
    for d <= i < overlap; 0 from ``overlap`` on, where ``overlap`` = H - s is the number of
    previous-chunk actions that reach into the new chunk.
    """
    if not 0 <= delay_steps <= overlap <= horizon:
        raise ValueError(f"need 0 <= delay_steps ({delay_steps}) <= overlap ({overlap}) <= horizon ({horizon})")
    weights = np.zeros(horizon, dtype=np.float64)
    weights[:delay_steps] = 1.0
    index = np.arange(delay_steps, overlap)
    c = (overlap - index) / (overlap - delay_steps + 1)
    weights[delay_steps:overlap] = c * np.expm1(c) / math.expm1(1.0)
    return weights


def guidance_weight(tau: float, max_weight: float, steps: int, cap_at_steps: bool = True) -> float:
    """min(beta_max, K, (1 - tau) / (tau r^2)) with r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2).

    The cap at K keeps one Euler step's guidance gain beta / K at most 1, so few-step
    sampling cannot overshoot the previous chunk (beta_max 10 at K = 2 would step 5x past
    it). At the paper's operating points (5 steps with beta_max 5, LeRobot's 10 with 10)
    the cap is inactive. ``cap_at_steps`` False drops it, as the reference implementation
    does (``rtc.guidance_limit: beta``), for the execution-strategy study to compare.
    """
    if tau >= 1.0:
        return 0.0
    limit = min(max_weight, float(steps)) if cap_at_steps else max_weight
    if tau <= 0.0:
        return limit
    r_squared = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    return min(limit, (1.0 - tau) / (tau * r_squared))


def handover_weights(delay_steps: int, overlap: int, horizon: int) -> np.ndarray:
    """Weights of the previous chunk in the final composite ``w * previous + (1 - w) * sampled``.

    The soft mask shifted by one action: 1 up to and including index d, then the same
    exponential decay to 0 at ``overlap``. The first action after the frozen ones therefore
    continues the previous chunk exactly, whether or not guidance has fully converged
    (few steps, an untrained or off-distribution model), and the hand-over to the new
    chunk's own plan is spread over the rest of the overlap.
    """
    return prefix_weights(min(delay_steps + 1, overlap), overlap, horizon)
