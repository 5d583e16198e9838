"""What a backend replaces: the per-step stages of a control step, tensors in, tensors out.

:class:`Policy` does the checking, preprocessing, prefix (once per task), normalisation and
RTC bookkeeping in torch and numpy, and hands every per-step computation to its ``stages``:

| call | inputs | output |
|---|---|---|
| ``vision`` | pixel patches (cameras, patches, patch_dim), positions, cos, sin | image tokens |
| ``step_backbone`` | image tokens, step template, slot indices, step cos/sin, prefix state | step features |
| ``context_kv`` | features (1, P + S, context_dim) | cross-attention K/V per DiT block |
| ``velocity`` | actions (1, H, A), t (1,), state (1, state_dim), K/V | velocity |
| ``guided_velocity`` | actions, t, state, mask, target, weights, K/V | masked velocity, RTC pull |
| ``sample`` | features, state, noise, mask, steps, guidance | the sampled chunk |

:class:`TorchStages` runs the policy's own modules eagerly; ONNX Runtime, TensorRT and CUDA
graphs subclass :class:`Stages` and replace what they accelerate. ``sample`` is the K-step
Euler loop over ``context_kv``/``velocity``/``guided_velocity`` unless a backend runs the
whole loop at once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from qwen_vla_ros.model.sampler import Guidance, GuidedVelocity, euler_sample
from qwen_vla_ros.model.timing import NullTimer

if TYPE_CHECKING:
    from qwen_vla_ros.model.task import Task

KeyValues = tuple[torch.Tensor, ...]
Engine = Callable[..., tuple[torch.Tensor, ...]]  # tensors in, tuple of tensors out


class Stages:
    """The per-step computation of a policy; subclasses implement the stage calls."""

    name = "abstract"

    def check_task(self, task: Task) -> None:
        """Raise ValueError before ``set_task`` swaps in a task these stages cannot run."""

    def vision(self, pixel_patches: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_backbone(self, image_tokens: torch.Tensor, template: torch.Tensor, image_index: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, *prefix_state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def context_kv(self, features: torch.Tensor) -> KeyValues:
        raise NotImplementedError

    def velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                 *kv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def guided_velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor, mask: torch.Tensor,
                        target: torch.Tensor, weights: torch.Tensor,
                        *kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample(
        self,
        features: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor,
        steps: int,
        guidance: Guidance | None = None,
        timer: NullTimer | None = None,
    ) -> torch.Tensor:
        """K Euler steps from ``noise`` (1, H, A) to the padded normalised chunk."""
        timer = timer or NullTimer()
        with timer.stage("context_kv"):
            kv = self.context_kv(features)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.velocity(x, t, state, *kv)

        def pull(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            assert guidance is not None  # euler_sample pulls only with guidance
            return self.guided_velocity(x, t, state, mask, guidance.target, guidance.weights, *kv)

        return euler_sample(velocity, noise, mask, steps, guidance, timer, pull if guidance is not None else None)


class TorchStages(Stages):
    """The policy's own modules, eager; guidance differentiates with autograd."""

    name = "torch"

    def __init__(self, vision: nn.Module, step_backbone: nn.Module, head: nn.Module) -> None:
        self.vision_module = vision
        self.step_module = step_backbone
        self.head = head
        self.guided = GuidedVelocity(head)

    def vision(self, pixel_patches: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        return self.vision_module(pixel_patches, positions, cos, sin)

    def step_backbone(self, image_tokens: torch.Tensor, template: torch.Tensor, image_index: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, *prefix_state: torch.Tensor) -> torch.Tensor:
        return self.step_module(image_tokens, template, image_index, cos, sin, *prefix_state)

    def context_kv(self, features: torch.Tensor) -> KeyValues:
        return self.head.context_kv(features)

    def velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                 *kv: torch.Tensor) -> torch.Tensor:
        return self.head(actions, t, state, *kv)

    def guided_velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor, mask: torch.Tensor,
                        target: torch.Tensor, weights: torch.Tensor,
                        *kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.guided(actions, t, state, mask, target, weights, *kv)


class EngineStages(Stages):
    """Stages run by one compiled engine per exported graph, called with the stage's inputs in
    order: ``vision``, ``step_backbone``, ``context_kv``, ``dit_step``, ``dit_guided``."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = dict(engines)

    def vision(self, pixel_patches: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        return self.engines["vision"](pixel_patches, positions, cos, sin)[0]

    def step_backbone(self, image_tokens: torch.Tensor, template: torch.Tensor, image_index: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, *prefix_state: torch.Tensor) -> torch.Tensor:
        return self.engines["step_backbone"](image_tokens, template, image_index, cos, sin, *prefix_state)[0]

    def context_kv(self, features: torch.Tensor) -> KeyValues:
        return self.engines["context_kv"](features)

    def velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                 *kv: torch.Tensor) -> torch.Tensor:
        return self.engines["dit_step"](actions, t, state, *kv)[0]

    def guided_velocity(self, actions: torch.Tensor, t: torch.Tensor, state: torch.Tensor, mask: torch.Tensor,
                        target: torch.Tensor, weights: torch.Tensor,
                        *kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        velocity, pull = self.engines["dit_guided"](actions, t, state, mask, target, weights, *kv)
        return velocity, pull
