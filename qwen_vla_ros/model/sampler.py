"""K-step Euler flow-matching sampling, with optional real-time-chunking guidance.

Flow time tau runs from 0 (noise) to 1 (actions); x_{tau + 1/K} = x_tau + v(x_tau, tau) / K.
With guidance (Black et al., ΠGDM-style inpainting) each step also predicts the final chunk
x̂1 = x + (1 - tau) v, weighs its distance to the previous chunk with the soft mask W, and
adds beta(tau) * W-weighted error pulled back through the network (a vector-Jacobian product)
to the velocity. Padded channels stay exactly zero: noise and velocity are masked.

The velocity and its pull at one step are one tensors-only call (:class:`GuidedVelocity`),
so backends that cannot differentiate at run time (ONNX Runtime, TensorRT, CUDA graphs)
run a graph in which the vector-Jacobian product was traced ahead of time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qwen_vla_ros.model.rtc import guidance_weight
from qwen_vla_ros.model.timing import NullTimer

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (x, t) -> (masked velocity, pull): the guided step with everything else bound
Pull = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Guidance:
    target: torch.Tensor  # (1, H, A) previous chunk, normalised and padded
    weights: torch.Tensor  # (1, H, 1) soft prefix mask
    max_weight: float
    cap_at_steps: bool = True  # beta(tau) also capped at the step count K (rtc.guidance_limit)


def velocity_and_pull(
    velocity: Velocity,
    x: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked velocity and the W-weighted error of x̂1 = x + (1 - t) v pulled back to x (a VJP)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t) * mask
        predicted = x + (1.0 - t.view(-1, 1, 1)) * v
        error = (target - predicted) * weights * mask
        (pull,) = torch.autograd.grad(predicted, x, grad_outputs=error.detach())
    return v.detach(), pull


class GuidedVelocity(nn.Module):
    """One guided step of the head as a module: (actions, t, state, mask, target, weights, *kv) ->
    (masked velocity, pull). Eager it differentiates with autograd; traced (``make_fx``) it
    becomes a plain forward graph that ONNX export and CUDA-graph capture can take."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        actions: torch.Tensor,
        t: torch.Tensor,
        state: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor,
        *kv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return velocity_and_pull(lambda x, tau: self.head(x, tau, state, *kv), actions, t, mask, target, weights)


def trace_guided(head: nn.Module, inputs: Sequence[torch.Tensor], symbolic: bool) -> nn.Module:
    """:class:`GuidedVelocity` traced with ``make_fx`` into a forward-only graph: the
    vector-Jacobian product becomes explicit backward operators, so running it needs no
    autograd. Attention is traced on the math kernel, whose backward is matmuls and softmax
    (the fused kernels' backward operators have no ONNX form). ``symbolic`` keeps shapes
    dynamic (for export); otherwise the graph is specialised to ``inputs``' shapes."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    guided = GuidedVelocity(head)
    with sdpa_kernel(SDPBackend.MATH):
        return make_fx(
            lambda *args: guided(*args),
            tracing_mode="symbolic" if symbolic else "real",
            _allow_non_fake_inputs=True,
        )(*inputs)


def euler_sample(
    velocity: Velocity,
    noise: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    guidance: Guidance | None = None,
    timer: NullTimer | None = None,
    pull: Pull | None = None,
) -> torch.Tensor:
    """Integrate ``velocity`` from masked ``noise`` (B, H, A) over ``steps`` Euler steps.

    With ``guidance``, ``pull`` computes each step's velocity and guidance pull; by default
    autograd differentiates ``velocity``.
    """
    timer = timer or NullTimer()
    if guidance is not None and pull is None:

        def pull(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return velocity_and_pull(velocity, x, t, mask, guidance.target, guidance.weights)

    x = noise * mask
    for step in range(steps):
        tau = step / steps
        t = torch.full((x.shape[0],), tau, device=x.device, dtype=torch.float32)
        with timer.stage("dit_step"):
            if guidance is None:
                v = velocity(x, t) * mask
            else:
                assert pull is not None  # set above whenever guidance is
                v, correction = pull(x, t)
                v = v + guidance_weight(tau, guidance.max_weight, steps, guidance.cap_at_steps) * correction * mask
            x = x + v / steps
    return x
