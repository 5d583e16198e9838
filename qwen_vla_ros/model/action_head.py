"""The DiT flow-matching action head.

Tokens are one state token followed by ``chunk_length`` action tokens in the padded
action space. Every block conditions on the flow time through adaLN (shift, scale and gate
for self-attention, cross-attention and MLP), lets the action tokens attend to each other,
and cross-attends to the backbone features. The cross-attention keys and values depend on
the features only, so :meth:`ActionHead.context_kv` computes them once per chunk and every
denoising step reuses them; :meth:`ActionHead.velocity_recomputing` is the naive variant
the benchmark compares against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qwen_vla_ros.model.checkpoint import ActionHeadSettings

KeyValues = tuple[torch.Tensor, ...]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] (scaled by 1000, as DiT scales its steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, context_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.modulation = nn.Linear(width, 9 * width)
        self.norm_self = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_cross = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(context_dim, 2 * width)
        self.cross_out = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.cross_kv(context).chunk(2, dim=-1)
        return _split_heads(key, self.heads), _split_heads(value, self.heads)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        (shift_s, scale_s, gate_s, shift_c, scale_c, gate_c, shift_m, scale_m, gate_m) = self.modulation(
            F.silu(cond)
        ).chunk(9, dim=-1)
        h = _modulate(self.norm_self(x), shift_s, scale_s)
        q, k, v = (_split_heads(part, self.heads) for part in self.self_qkv(h).chunk(3, dim=-1))
        x = x + gate_s[:, None, :] * self.self_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        h = _modulate(self.norm_cross(x), shift_c, scale_c)
        q = _split_heads(self.cross_q(h), self.heads)
        x = x + gate_c[:, None, :] * self.cross_out(_merge_heads(F.scaled_dot_product_attention(q, key, value)))
        h = _modulate(self.norm_mlp(x), shift_m, scale_m)
        return x + gate_m[:, None, :] * self.mlp(h)


class ActionHead(nn.Module):
    def __init__(self, settings: ActionHeadSettings) -> None:
        super().__init__()
        width = settings.width
        self.settings = settings
        self.state_in = nn.Linear(settings.state_dim, width)
        self.action_in = nn.Linear(settings.action_dim, width)
        self.position = nn.Parameter(torch.randn(settings.chunk_length + 1, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(settings.frequency_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.context_norm = nn.LayerNorm(settings.context_dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            DiTBlock(width, settings.heads, settings.context_dim, settings.mlp_ratio) for _ in range(settings.depth)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.action_out = nn.Linear(width, settings.action_dim)

    def context_kv(self, features: torch.Tensor) -> KeyValues:
        """Cross-attention keys and values of every block: (k0, v0, k1, v1, ...), once per chunk."""
        context = self.context_norm(features.to(self.context_norm.weight.dtype))
        return tuple(tensor for block in self.blocks for tensor in block.context_kv(context))

    def forward(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor, *kv: torch.Tensor) -> torch.Tensor:
        """Velocity (B, H, action_dim) of noisy padded actions (B, H, action_dim) at flow time t (B,)."""
        dtype = self.action_in.weight.dtype
        tokens = torch.cat([self.state_in(state.to(dtype))[:, None, :], self.action_in(actions.to(dtype))], dim=1)
        tokens = tokens + self.position[None, : tokens.shape[1]]
        cond = self.time_mlp(timestep_embedding(t, self.settings.frequency_dim).to(dtype))
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, cond, kv[2 * index], kv[2 * index + 1])
        shift, scale = self.final_modulation(F.silu(cond)).chunk(2, dim=-1)
        return self.action_out(_modulate(self.final_norm(tokens), shift, scale))[:, 1:].float()

    def velocity_recomputing(
        self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """The naive step: cross-attention keys and values recomputed from the features every call."""
        return self(actions, t, state, *self.context_kv(features))
