"""K-step Euler flow-matching sampling, with optional real-time-chunking guidance.

Flow time tau runs from 0 (noise) to 1 (actions); x_{tau + 1/K} = x_tau + v(x_tau, tau) / K.
With guidance (Black et al., ΠGDM-style inpainting) each step also predicts the final chunk
x̂1 = x + (1 - tau) v, weighs its distance to the previous chunk with the soft mask W, and
adds beta(tau) * W-weighted error pulled back through the network (a vector-Jacobian product)
to the velocity. Padded channels stay exactly zero: noise and velocity are masked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qwen_vla_ros.model.rtc import guidance_weight
from qwen_vla_ros.model.timing import NullTimer

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Guidance:
    target: torch.Tensor  # (1, H, A) previous chunk, normalised and padded
    weights: torch.Tensor  # (1, H, 1) soft prefix mask
    max_weight: float


def euler_sample(
    velocity: Velocity,
    noise: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    guidance: Guidance | None = None,
    timer: NullTimer | None = None,
) -> torch.Tensor:
    """Integrate ``velocity`` from masked ``noise`` (B, H, A) over ``steps`` Euler steps."""
    timer = timer or NullTimer()
    x = noise * mask
    for step in range(steps):
        tau = step / steps
        t = torch.full((x.shape[0],), tau, device=x.device, dtype=torch.float32)
        with timer.stage("dit_step"):
            if guidance is None:
                v = velocity(x, t) * mask
            else:
                v = _guided_velocity(velocity, x, t, tau, steps, mask, guidance)
            x = x + v / steps
    return x


def _guided_velocity(
    velocity: Velocity, x: torch.Tensor, t: torch.Tensor, tau: float, steps: int, mask: torch.Tensor, guidance: Guidance
) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t) * mask
        predicted = x + (1.0 - tau) * v
        error = (guidance.target - predicted) * guidance.weights * mask
        (pull,) = torch.autograd.grad(predicted, x, grad_outputs=error.detach())
    return v.detach() + guidance_weight(tau, guidance.max_weight, steps) * pull * mask
