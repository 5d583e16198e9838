"""The chunked gated delta rule written for export: no Python loop whose length depends on a shape.

transformers' ``torch_chunk_gated_delta_rule`` scans its 64-token chunks in a Python loop and,
under export, solves each chunk's unit-lower-triangular system by forward substitution: 63
unrolled row updates per layer. Exported that way the chunk count becomes a constant (the
step length, and with it the camera count, stops being dynamic) and the graph grows to
thousands of nodes. Here the same algorithm is expressed with

- the chunk scan as ``torch.scan`` (an ONNX ``Scan`` over however many chunks there are);
- the triangular solve in log depth, exact because a strictly lower triangular L is nilpotent:
  ``(I + L)^-1 = (I - L)(I + L^2)(I + L^4)...(I + L^32)`` for 64 x 64 chunks.

Decays, update and outputs are the chunk algorithm's; the tests compare this function with
transformers' implementation over one and several chunks, with and without padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan
from transformers.models.qwen3_5.modeling_qwen3_5 import l2norm

CHUNK = 64


def unit_lower_inverse(strictly_lower: torch.Tensor) -> torch.Tensor:
    """(I + L)^-1 for strictly lower triangular L (..., n, n), by repeated squaring."""
    size = strictly_lower.shape[-1]
    eye = torch.eye(size, dtype=strictly_lower.dtype, device=strictly_lower.device)
    power = -strictly_lower
    inverse = eye + power
    for _ in range(max(0, math.ceil(math.log2(size)) - 1)):
        power = power @ power
        inverse = inverse + inverse @ power
    return inverse


def _chunk_step(
    state: torch.Tensor, chunk: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk on top of the recurrent state: (state', chunk output)."""
    new_values, k_cumdecay, query, key, attention, chunk_decay = chunk
    corrected = new_values - k_cumdecay @ state
    output = query @ state + attention @ corrected
    return state * chunk_decay + key.transpose(-1, -2) @ corrected, output


def scan_gated_delta_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor,
    use_qk_l2norm_in_kernel: bool = True,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``torch_chunk_gated_delta_rule(..., output_final_state=True)``.

    query/key (B, S, Hk, Dk), value (B, S, Hv, Dv), g/beta (B, S, Hv), initial_state
    (B, Hv, Dk, Dv); returns the output (B, S, Hv, Dv) and the state after the span.
    """
    dtype = query.dtype
    length = query.shape[1]
    heads_k, heads_v = key.shape[2], value.shape[2]
    if heads_k != heads_v:
        query = query.repeat_interleave(heads_v // heads_k, dim=2)
        key = key.repeat_interleave(heads_v // heads_k, dim=2)
    query, key, value, beta, g = (x.transpose(1, 2).float() for x in (query, key, value, beta, g))
    if use_qk_l2norm_in_kernel:
        query = l2norm(query, dim=-1, eps=1e-6)
        key = l2norm(key, dim=-1, eps=1e-6)
    query = query * query.shape[-1] ** -0.5

    # zero-padded tokens (beta 0, decay 0) change neither the outputs nor the state
    pad = (CHUNK - length % CHUNK) % CHUNK
    query, key, value = (F.pad(x, (0, 0, 0, pad)) for x in (query, key, value))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    batch, heads = query.shape[:2]

    def chunked(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, -1, CHUNK, *x.shape[3:])

    query, key, value, beta, g = (chunked(x) for x in (query, key, value, beta, g))
    cumulative = g.cumsum(dim=-1)  # log decay from each chunk's start
    causal = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=query.device).tril()
    decay = (cumulative.unsqueeze(-1) - cumulative.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()

    k_beta = key * beta.unsqueeze(-1)
    solve = unit_lower_inverse(((k_beta @ key.transpose(-1, -2)) * decay).tril(-1))
    new_values = solve @ (value * beta.unsqueeze(-1))
    k_cumdecay = solve @ (k_beta * cumulative.exp().unsqueeze(-1))
    attention = (query @ key.transpose(-1, -2)) * decay
    last = cumulative[..., -1:]
    chunks = (
        new_values,
        k_cumdecay,
        query * cumulative.exp().unsqueeze(-1),
        key * (last - cumulative).exp().unsqueeze(-1),
        attention,
        last.exp().unsqueeze(-1),
    )
    state, outputs = scan(_chunk_step, initial_state.float(), tuple(x.movedim(2, 0) for x in chunks))
    output = outputs.movedim(0, 2).reshape(batch, heads, -1, outputs.shape[-1])[:, :, :length]
    return output.transpose(1, 2).to(dtype), state
