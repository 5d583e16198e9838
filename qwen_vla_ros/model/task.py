"""The per-task state a policy builds once per embodiment and instruction.

Its own module, below both :mod:`~qwen_vla_ros.model.policy` (which builds it) and
:mod:`~qwen_vla_ros.model.stages` (whose backends check it), so neither imports the other
back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.model.backbone import State
from qwen_vla_ros.model.checkpoint import EmbodimentEntry
from qwen_vla_ros.model.normalization import ChannelNormalizer, RelativeChannels
from qwen_vla_ros.model.prompt import TokenLayout


@dataclass(frozen=True)
class Task:
    """Everything fixed while the embodiment and instruction are: built once by set_task."""

    embodiment: EmbodimentConfig
    entry: EmbodimentEntry
    instruction: str
    cameras: tuple[str, ...]
    action_normalizer: ChannelNormalizer
    state_normalizer: ChannelNormalizer
    relative: RelativeChannels  # action channels the head sees as offsets from the state
    action_mask: torch.Tensor  # (1, 1, action_dim)
    layout: TokenLayout
    grid_thw: torch.Tensor  # (cameras, 3)
    step_template: torch.Tensor  # (1, S, hidden) token embeddings, image slots overwritten per step
    image_index: torch.Tensor  # (cameras * tokens_per_image,)
    step_cos: torch.Tensor
    step_sin: torch.Tensor
    prefix_state: State
    prefix_features: torch.Tensor  # (1, P, context_dim)
