"""The Qwen3.5 language trunk as a pure function of explicit state.

transformers keeps a continuation's state in a mutable ``DynamicCache`` and its M-RoPE
offsets in ``Qwen3_5Model.rope_deltas``; reusing one prefix for many control steps through
that API means copying the cache every step and guarding the model's attribute. Here the
same decoder layers (their weights, shared with the transformers model) run as a function:

    features, state' = trunk.extend(embeds, cos, sin, state)

where ``state`` is a flat tuple of tensors, per layer up to the deepest feature layer: the
causal-conv window (last ``kernel`` inputs) and the gated-delta recurrent matrix for a
gated-DeltaNet layer, the rotated keys and values for a full-attention layer. Nothing is
mutated (every update is a ``cat`` or a new tensor), positions come in as precomputed
cos/sin, and layers above the deepest feature layer are never run. The same explicit
signature is what an ONNX/TensorRT export needs. ``test_model_parity`` proves it equals
transformers' own forward pass.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen
from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

State = tuple[torch.Tensor, ...]
DeltaRule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class Trunk(nn.Module):
    """Decoder layers 1..max(feature_layers) of a ``Qwen3_5TextModel``, sharing its weights.

    ``delta_rule`` computes the gated-DeltaNet recurrence: transformers' chunked reference by
    default, :func:`qwen_vla_ros.model.delta_rule.span_gated_delta_rule` for ONNX export.
    """

    def __init__(
        self,
        language_model: qwen.Qwen3_5TextModel,
        feature_layers: Sequence[int],
        delta_rule: DeltaRule = qwen.torch_chunk_gated_delta_rule,
    ) -> None:
        super().__init__()
        config = language_model.config
        self.delta_rule = delta_rule
        self.feature_layers = tuple(feature_layers)
        self.num_hidden_layers = config.num_hidden_layers
        depth = max(self.feature_layers)
        self.layer_types = tuple(config.layer_types[:depth])
        self.layers = nn.ModuleList(language_model.layers[:depth])
        self.final_norm = language_model.norm

    def empty_state(self, device: torch.device, dtype: torch.dtype) -> State:
        """The state before any token: zero conv windows and recurrences, no keys or values."""
        state: list[torch.Tensor] = []
        for layer, kind in zip(self.layers, self.layer_types, strict=True):
            if kind == "linear_attention":
                mixer = layer.linear_attn
                state.append(torch.zeros(1, mixer.conv_dim, mixer.conv_kernel_size, device=device, dtype=dtype))
                shape = (1, mixer.num_v_heads, mixer.head_k_dim, mixer.head_v_dim)
                state.append(torch.zeros(shape, device=device, dtype=torch.float32))
            else:
                attention = layer.self_attn
                heads = attention.config.num_key_value_heads
                empty = torch.zeros(1, heads, 0, attention.head_dim, device=device, dtype=dtype)
                state.extend((empty, empty))
        return tuple(state)

    def forward(self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        """Features (1, S, hidden * len(feature_layers)) of S new tokens following ``state``."""
        return self._run(embeds, cos, sin, state, keep_state=False)[0]

    def extend(
        self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Features and the state after the new tokens (used once per task for the prefix)."""
        return self._run(embeds, cos, sin, state, keep_state=True)

    def _run(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: Sequence[torch.Tensor], keep_state: bool
    ) -> tuple[torch.Tensor, State]:
        if len(state) != 2 * len(self.layers):
            raise ValueError(f"state has {len(state)} tensors, expected {2 * len(self.layers)}")
        collected: dict[int, torch.Tensor] = {}
        new_state: list[torch.Tensor] = []
        for index, (layer, kind) in enumerate(zip(self.layers, self.layer_types, strict=True)):
            first, second = state[2 * index], state[2 * index + 1]
            mixed_input = layer.input_layernorm(hidden)
            if kind == "linear_attention":
                mixed, first, second = _gated_delta(layer.linear_attn, mixed_input, first, second, self.delta_rule)
            else:
                mixed, first, second = _attention(layer.self_attn, mixed_input, cos, sin, first, second)
            hidden = hidden + mixed
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if keep_state:
                new_state.extend((first, second))
            number = index + 1
            if number in self.feature_layers:
                # transformers' hidden_states[-1] is the final-normed output
                collected[number] = self.final_norm(hidden) if number == self.num_hidden_layers else hidden
        features = torch.cat([collected[number] for number in self.feature_layers], dim=-1)
        return features, tuple(new_state)


def _gated_delta(
    mixer: qwen.Qwen3_5GatedDeltaNet,
    hidden: torch.Tensor,
    conv_state: torch.Tensor,
    recurrent_state: torch.Tensor,
    delta_rule: DeltaRule,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Qwen3_5GatedDeltaNet.forward`` continuing from explicit conv and recurrent state."""
    batch, length, _ = hidden.shape
    projected = mixer.in_proj_qkv(hidden).transpose(1, 2)
    gate = mixer.in_proj_z(hidden).reshape(batch, length, -1, mixer.head_v_dim)
    b = mixer.in_proj_b(hidden)
    a = mixer.in_proj_a(hidden)

    window = torch.cat([conv_state, projected], dim=-1)
    new_conv_state = window[..., -mixer.conv_kernel_size :]
    weight = mixer.conv1d.weight
    convolved = F.conv1d(window.to(weight.dtype), weight, mixer.conv1d.bias, groups=mixer.conv_dim)[..., -length:]
    convolved = ACT2FN[mixer.activation](convolved).to(hidden.dtype).transpose(1, 2)
    query, key, value = torch.split(convolved, [mixer.key_dim, mixer.key_dim, mixer.value_dim], dim=-1)
    query = query.reshape(batch, length, -1, mixer.head_k_dim)
    key = key.reshape(batch, length, -1, mixer.head_k_dim)
    value = value.reshape(batch, length, -1, mixer.head_v_dim)

    beta = b.sigmoid()
    decay = -mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)
    core, new_recurrent_state = delta_rule(
        query, key, value, g=decay, beta=beta, initial_state=recurrent_state,
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )
    core = mixer.norm(core.reshape(-1, mixer.head_v_dim), gate.reshape(-1, mixer.head_v_dim))
    return mixer.out_proj(core.reshape(batch, length, -1)), new_conv_state, new_recurrent_state


def _attention(
    attention: qwen.Qwen3_5Attention,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    past_keys: torch.Tensor,
    past_values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Qwen3_5Attention.forward`` (gated output, q/k norm, partial M-RoPE) over past + new keys."""
    batch, length, _ = hidden.shape
    head_dim = attention.head_dim
    query, gate = torch.chunk(attention.q_proj(hidden).view(batch, length, -1, head_dim * 2), 2, dim=-1)
    gate = gate.reshape(batch, length, -1)
    query = attention.q_norm(query).transpose(1, 2)
    key = attention.k_norm(attention.k_proj(hidden).view(batch, length, -1, head_dim)).transpose(1, 2)
    value = attention.v_proj(hidden).view(batch, length, -1, head_dim).transpose(1, 2)
    query, key = qwen.apply_rotary_pos_emb(query, key, cos, sin)

    keys = torch.cat([past_keys, key], dim=2)
    values = torch.cat([past_values, value], dim=2)
    past = past_keys.shape[2]
    # token i of the new span sits at position past + i and sees every key up to it
    visible = torch.arange(past + length, device=hidden.device)[None, :] <= (
        torch.arange(length, device=hidden.device)[:, None] + past
    )
    groups = attention.num_key_value_groups
    out = F.scaled_dot_product_attention(
        query, qwen.repeat_kv(keys, groups), qwen.repeat_kv(values, groups), attn_mask=visible, scale=attention.scaling
    )
    out = out.transpose(1, 2).reshape(batch, length, -1) * torch.sigmoid(gate)
    return attention.o_proj(out), keys, values


class StepBackbone(nn.Module):
    """Per control step: image tokens written into the step template, run on top of the prefix state."""

    def __init__(self, trunk: Trunk) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(
        self,
        image_tokens: torch.Tensor,
        template: torch.Tensor,
        image_index: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *prefix_state: torch.Tensor,
    ) -> torch.Tensor:
        """image_tokens (N, H) go to ``image_index`` of ``template`` (1, S, H); returns (1, S, C)."""
        embeds = template.index_copy(1, image_index, image_tokens.unsqueeze(0).to(template.dtype))
        return self.trunk(embeds, cos, sin, *prefix_state)


class VisionEncoder(nn.Module):
    """transformers' Qwen3.5 vision tower, batched over cameras with per-resolution geometry precomputed.

    All cameras share the checkpoint resolution, so the learned position embedding
    (bilinearly resampled to the patch grid), the 2-D rotary angles and the attention span
    are the same for every image: :meth:`geometry` computes them once with transformers'
    own helpers, and :meth:`forward` runs (cameras, patches, ...) tensors through the same
    weights, with attention batched per camera instead of split by ``cu_seqlens``. The
    Conv3d patch embedding, whose kernel equals its stride, is the matmul it amounts to.
    """

    def __init__(self, visual: qwen.Qwen3_5VisionModel) -> None:
        super().__init__()
        self.visual = visual

    def geometry(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """(position embeddings, rotary cos, rotary sin) of one image's patch grid."""
        visual = self.visual
        grid_thw = torch.tensor([grid], dtype=torch.long, device=device)
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid_thw,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=visual.spatial_merge_size,
        )
        positions = (visual.pos_embed(indices) * weights[:, :, None]).sum(1).to(visual.pos_embed.weight.dtype)
        cos, sin = visual.rotary_pos_emb(positions, get_vision_position_ids(grid_thw, visual.spatial_merge_size))
        return positions, cos, sin

    def forward(
        self, pixel_patches: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """pixel_patches (cameras, patches, patch_dim) -> image tokens (cameras * patches / merge^2, out_hidden)."""
        visual = self.visual
        projection = visual.patch_embed.proj
        hidden = F.linear(pixel_patches.to(projection.weight.dtype), projection.weight.flatten(1), projection.bias)
        hidden = hidden + positions
        for block in visual.blocks:
            hidden = hidden + _vision_attention(block.attn, block.norm1(hidden), cos, sin)
            hidden = hidden + block.mlp(block.norm2(hidden))
        return visual.merger(hidden.flatten(0, 1))


def _vision_attention(
    attention: qwen.Qwen3_5VisionAttention, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """``Qwen3_5VisionAttention.forward`` for a batch of equally sized images."""
    cameras, patches, _ = hidden.shape
    query, key, value = (
        attention.qkv(hidden).reshape(cameras, patches, 3, attention.num_heads, -1).permute(2, 0, 1, 3, 4).unbind(0)
    )
    query, key = qwen.apply_rotary_pos_emb_vision(query, key, cos, sin)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attention.scaling
    )
    return attention.proj(out.transpose(1, 2).reshape(cameras, patches, -1))
