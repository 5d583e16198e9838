"""The Qwen-VLA policy: checkpoint -> stages -> action chunks in robot units.

A control step runs four stages, each an ``nn.Module`` whose inputs are explicit tensors so
a backend (ONNX Runtime, TensorRT, CUDA graphs) can replace it behind this class:

1. ``vision``: patches of every camera -> image tokens;
2. ``step_backbone``: image tokens on top of the cached prefix state -> step features;
3. ``head.context_kv``: cross-attention keys/values of the features, once per chunk;
4. ``head``: the DiT velocity, called K times by the Euler sampler.

``Policy.stages`` (:mod:`qwen_vla_ros.model.stages`) runs them: the modules themselves by
default, a backend's engines after ``load_policy(..., backend=...)``.

The prefix (system text, embodiment prompt, instruction) runs once in :meth:`set_task`; its
state and features live in an immutable :class:`Task` that ``infer`` only reads, so a new
task is swapped in atomically while another thread infers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from qwen_vla_ros.chunk import ActionChunk
from qwen_vla_ros.config import EMBODIMENTS, EmbodimentConfig, load_embodiment
from qwen_vla_ros.config.spaces import Normalization
from qwen_vla_ros.errors import InvalidArgumentError, PolicyInputError
from qwen_vla_ros.model.action_head import ActionHead
from qwen_vla_ros.model.backbone import StepBackbone, Trunk, VisionEncoder
from qwen_vla_ros.model.checkpoint import MAX_STEPS, MIN_STEPS, CheckpointError, EmbodimentEntry, Manifest
from qwen_vla_ros.model.denormals import flushed_denormals
from qwen_vla_ros.model.images import PatchSpec, check_images, patchify
from qwen_vla_ros.model.normalization import ChannelNormalizer, RelativeChannels, from_padded, mask_vector, to_padded
from qwen_vla_ros.model.prompt import TokenLayout, VisionTokens, prefix_text, step_ids
from qwen_vla_ros.model.rtc import handover_weights, prefix_weights
from qwen_vla_ros.model.sampler import Guidance, euler_sample
from qwen_vla_ros.model.stages import Stages, TorchStages
from qwen_vla_ros.model.task import Task
from qwen_vla_ros.model.timing import NullTimer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_GUIDANCE = 10.0


class Policy:
    def __init__(
        self,
        manifest: Manifest,
        backbone_model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        patch_spec: PatchSpec,
        head: ActionHead,
        device: torch.device,
        dtype: torch.dtype,
        source: str = "",
    ) -> None:
        self.manifest = manifest
        self.backbone_model = backbone_model  # the transformers Qwen3_5ForConditionalGeneration
        self.tokenizer = tokenizer
        self.patch_spec = patch_spec
        self.device = device
        self.dtype = dtype
        self.source = source
        language_model = backbone_model.model.language_model
        self.vision = VisionEncoder(backbone_model.model.visual)
        with torch.no_grad():
            self.vision_geometry = self.vision.geometry(patch_spec.grid, device)
        self.step_backbone = StepBackbone(Trunk(language_model, manifest.backbone.feature_layers))
        self.head = head
        self.stages: Stages = TorchStages(self.vision, self.step_backbone, head)
        config = backbone_model.config
        self.vision_tokens = VisionTokens(config.image_token_id, config.vision_start_token_id, config.vision_end_token_id)
        self.max_guidance_weight = DEFAULT_MAX_GUIDANCE
        self.guidance_capped_at_steps = True  # rtc.guidance_limit "min(beta,K)"; load_policy_from_config sets it
        self.timer: NullTimer = NullTimer()
        self.flush_denormals = device.type == "cpu"  # see model.denormals; load_policy sets it from its options
        self._num_steps = manifest.sampling.default_steps
        self._task: Task | None = None

    # ---------------------------------------------------------------- settings
    @property
    def num_steps(self) -> int:
        """Euler denoising steps K per chunk (1..10); the checkpoint's default until set."""
        return self._num_steps

    @num_steps.setter
    def num_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
            raise InvalidArgumentError(f"denoising steps must be an integer in [{MIN_STEPS}, {MAX_STEPS}], got {steps!r}")
        self._num_steps = steps

    @property
    def embodiments(self) -> list[str]:
        return sorted(self.manifest.embodiments)

    @property
    def task(self) -> Task:
        if self._task is None:
            raise ValueError("no task set: call set_task(embodiment, instruction) before infer/encode")
        return self._task

    # ---------------------------------------------------------------- task
    def set_task(self, embodiment: str | Path | EmbodimentConfig, instruction: str) -> None:
        """Check the embodiment against the checkpoint, then run and cache the prefix."""
        config = self._resolve_embodiment(embodiment)
        entry = self.manifest.embodiments.get(config.name)
        if entry is None:
            raise CheckpointError(
                self.source or "checkpoint",
                f"embodiment {config.name!r} is not in this checkpoint; it supports {self.embodiments}",
            )
        _check_agreement(config, entry, self.manifest, self.source or "checkpoint")
        text = prefix_text(self.manifest.prompt, config.prompt, instruction, list(self.tokenizer.all_special_tokens))
        prefix_ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        cameras = tuple(camera.name for camera in config.cameras)
        ids, image_positions = step_ids(len(cameras), self.patch_spec.tokens_per_image, self.vision_tokens)
        layout = TokenLayout(prefix_ids, ids, image_positions)
        normalization = entry.normalization or config.normalization
        with torch.no_grad(), flushed_denormals(self.flush_denormals):
            task = self._build_task(config, entry, instruction, cameras, layout, normalization)
        self.stages.check_task(task)
        self._task = task

    def _resolve_embodiment(self, embodiment: str | Path | EmbodimentConfig) -> EmbodimentConfig:
        if isinstance(embodiment, EmbodimentConfig):
            return embodiment
        if not isinstance(embodiment, (str, Path)):
            raise ValueError(f"embodiment must be a name, a YAML path or an EmbodimentConfig, got {embodiment!r}")
        if str(embodiment) not in EMBODIMENTS and not Path(embodiment).expanduser().is_file():
            raise InvalidArgumentError(
                f"unknown embodiment {str(embodiment)!r}: not a shipped config {list(EMBODIMENTS)} nor a YAML file; "
                f"this checkpoint supports {self.embodiments}"
            )
        return load_embodiment(embodiment)

    def _build_task(
        self,
        config: EmbodimentConfig,
        entry: EmbodimentEntry,
        instruction: str,
        cameras: tuple[str, ...],
        layout: TokenLayout,
        normalization: Normalization,
    ) -> Task:
        device = self.device
        language_model = self.backbone_model.model.language_model
        grid = torch.tensor([self.patch_spec.grid] * len(cameras), dtype=torch.long, device=device).view(-1, 3)
        full_ids = torch.tensor([layout.full_ids], dtype=torch.long, device=device)
        positions, _ = self.backbone_model.model.get_rope_index(
            full_ids,
            mm_token_type_ids=torch.tensor([layout.mm_token_type_ids], dtype=torch.long, device=device),
            image_grid_thw=grid if cameras else None,
        )
        embeds = language_model.embed_tokens(full_ids)
        cos, sin = language_model.rotary_emb(embeds, positions)
        split = len(layout.prefix_ids)
        trunk = self.step_backbone.trunk
        prefix_features, prefix_state = trunk.extend(
            embeds[:, :split], cos[:, :split], sin[:, :split], trunk.empty_state(device, self.dtype)
        )
        action_dim = self.manifest.action_head.action_dim
        return Task(
            embodiment=config,
            entry=entry,
            instruction=instruction,
            cameras=cameras,
            action_normalizer=ChannelNormalizer.from_stats(normalization.action),
            state_normalizer=ChannelNormalizer.from_stats(normalization.state),
            relative=RelativeChannels.of(entry.relative_actions, entry.action_channels, entry.state_channels),
            action_mask=torch.from_numpy(mask_vector(entry.action_mask, action_dim)).to(device).view(1, 1, -1),
            layout=layout,
            grid_thw=grid,
            step_template=embeds[:, split:].contiguous(),
            image_index=torch.tensor(layout.image_positions, dtype=torch.long, device=device),
            step_cos=cos[:, split:].contiguous(),
            step_sin=sin[:, split:].contiguous(),
            prefix_state=prefix_state,
            prefix_features=prefix_features,
        )

    # ---------------------------------------------------------------- inference
    def encode(self, images: Mapping[str, np.ndarray], state: np.ndarray) -> np.ndarray:
        """Backbone features the head reads, (prefix + step tokens, context_dim) float32."""
        task = self.task
        frames = check_images(images, task.cameras)
        self.check_state(task, state)
        with torch.no_grad(), flushed_denormals(self.flush_denormals):
            features = self._features(task, frames)
        return features[0].float().cpu().numpy()

    def infer(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        *,
        committed: np.ndarray | None = None,
        delay_steps: int = 0,
        seed: int | None = None,
    ) -> ActionChunk:
        """One action chunk in robot units. With ``committed`` (the actions the robot executes
        from this observation on, embodiment channels) the first ``delay_steps`` are kept and
        the rest is inpainted to continue them (real-time chunking). An input it cannot use
        raises PolicyInputError."""
        task = self.task
        frames = check_images(images, task.cameras)
        state_vector = self.check_state(task, state)
        committed_actions = self._check_committed(task, committed, delay_steps)
        with self.timer.stage("total"), torch.no_grad(), flushed_denormals(self.flush_denormals):
            features = self._features(task, frames)
            padded = self.sample(task, features, state_vector, seed, committed_actions, delay_steps)
        return self.chunk(task, padded, state_vector, committed_actions, delay_steps)

    def sample(
        self,
        task: Task,
        features: torch.Tensor,
        state_vector: np.ndarray,
        seed: int | None,
        committed: np.ndarray | None = None,
        delay_steps: int = 0,
        reuse_kv: bool = True,
    ) -> np.ndarray:
        """Normalised padded actions (chunk_length, action_dim) from backbone features.

        ``reuse_kv=False`` recomputes the cross-attention keys/values at every step, the
        naive baseline the benchmark compares against.
        """
        settings = self.manifest.action_head
        state_padded = to_padded(task.state_normalizer.normalize(state_vector), task.entry.state_mask, settings.state_dim)
        state_tensor = torch.from_numpy(state_padded).to(self.device).unsqueeze(0)
        guidance = None if committed is None else self._guidance(task, committed, delay_steps, state_vector)
        noise = self._noise(seed)
        if reuse_kv:
            sampled = self.stages.sample(
                features, state_tensor, noise, task.action_mask, self.num_steps, guidance, self.timer
            )
        else:

            def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.head.velocity_recomputing(x, t, state_tensor, features)

            sampled = euler_sample(velocity, noise, task.action_mask, self.num_steps, guidance, self.timer)
        return sampled[0, : task.entry.chunk_length].float().cpu().numpy()

    def chunk(self, task: Task, padded: np.ndarray, state_vector: np.ndarray, committed: np.ndarray | None,
              delay_steps: int) -> ActionChunk:
        """Robot units, the embodiment's channels (relative ones back from offsets of ``state_vector``, the state
        the chunk was sampled for); with committed actions, the RTC hand-over."""
        actions = task.relative.restore(
            task.action_normalizer.unnormalize(from_padded(padded, task.entry.action_mask)), state_vector)
        if committed is not None:
            overlap = len(committed)
            weights = handover_weights(delay_steps, overlap, task.entry.chunk_length)[:overlap, None]
            actions[:overlap] = weights * committed + (1.0 - weights) * actions[:overlap]
        return ActionChunk(
            actions=actions.astype(np.float32),
            channel_names=tuple(task.entry.action_channels),
            dt=task.entry.action_dt,
            metadata={"denoising_steps": float(self.num_steps), "delay_steps": float(delay_steps)},
        )

    def model_inputs(self, images: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The identical step as plain transformers inputs (full sequence, no cache)."""
        task = self.task
        patches = patchify(check_images(images, task.cameras), self.patch_spec)
        return {
            "input_ids": torch.tensor([task.layout.full_ids], dtype=torch.long, device=self.device),
            "mm_token_type_ids": torch.tensor([task.layout.mm_token_type_ids], dtype=torch.long, device=self.device),
            "pixel_values": torch.from_numpy(patches).to(self.device, self.dtype),
            "image_grid_thw": task.grid_thw,
        }

    def _features(self, task: Task, frames: list[np.ndarray]) -> torch.Tensor:
        if not task.cameras:
            return task.prefix_features
        with self.timer.stage("preprocess"):
            pixels = self.pixels(frames)
        return self.features_of_pixels(task, pixels)

    def pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The vision tower's input for one observation's frames (camera order): (cameras, patches, patch_dim)."""
        pixels = torch.from_numpy(patchify(frames, self.patch_spec)).to(self.device, self.dtype)
        return pixels.view(len(frames), -1, pixels.shape[-1])

    def features_of_pixels(self, task: Task, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone features (1, prefix + step tokens, context_dim) from :meth:`pixels`: differentiable in the vision
        tower's weights when the stages are torch's and grad is on (training, ``model.training``)."""
        timer = self.timer
        with timer.stage("vision"):
            image_tokens = self.stages.vision(pixels, *self.vision_geometry)
        with timer.stage("backbone_step"):
            step = self.stages.step_backbone(
                image_tokens, task.step_template, task.image_index, task.step_cos, task.step_sin, *task.prefix_state
            )
        return torch.cat([task.prefix_features, step], dim=1)

    def _noise(self, seed: int | None) -> torch.Tensor:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        settings = self.manifest.action_head
        noise = torch.randn(1, settings.chunk_length, settings.action_dim, generator=generator)
        return noise.to(self.device)

    def _guidance(self, task: Task, committed: np.ndarray, delay_steps: int, state_vector: np.ndarray) -> Guidance:
        settings = self.manifest.action_head
        target = np.zeros((settings.chunk_length, settings.action_dim), dtype=np.float32)
        target[: len(committed)] = to_padded(
            task.action_normalizer.normalize(task.relative.offset(committed, state_vector)), task.entry.action_mask,
            settings.action_dim
        )
        weights = prefix_weights(delay_steps, len(committed), settings.chunk_length)
        return Guidance(
            target=torch.from_numpy(target).to(self.device).unsqueeze(0),
            weights=torch.from_numpy(weights.astype(np.float32)).to(self.device).view(1, -1, 1),
            max_weight=self.max_guidance_weight,
            cap_at_steps=self.guidance_capped_at_steps,
        )

    # ---------------------------------------------------------------- input checks
    @staticmethod
    def check_state(task: Task, state: np.ndarray) -> np.ndarray:
        names = task.entry.state_channels
        try:
            vector = np.asarray(state, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PolicyInputError(f"state must be numeric, got {state!r}") from exc
        if vector.shape != (len(names),):
            raise PolicyInputError(f"state must have shape ({len(names)},) for channels {names}, got {vector.shape}")
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(vector))]
        if bad:
            raise PolicyInputError(f"state is not finite in channel(s) {bad}")
        return vector

    @staticmethod
    def _check_committed(task: Task, committed: np.ndarray | None, delay_steps: int) -> np.ndarray | None:
        if isinstance(delay_steps, bool) or not isinstance(delay_steps, (int, np.integer)) or delay_steps < 0:
            raise PolicyInputError(f"delay_steps must be a non-negative integer, got {delay_steps!r}")
        if committed is None:
            if delay_steps:
                raise PolicyInputError(f"delay_steps is {delay_steps} but no committed actions were given")
            return None
        names = task.entry.action_channels
        actions = np.asarray(committed, dtype=np.float64)
        horizon = task.entry.chunk_length
        if actions.ndim != 2 or actions.shape[1] != len(names) or not 1 <= actions.shape[0] <= horizon:
            raise PolicyInputError(
                f"committed must have shape (n, {len(names)}) with 1 <= n <= {horizon} for channels {names}, "
                f"got {actions.shape}"
            )
        if not np.all(np.isfinite(actions)):
            raise PolicyInputError("committed actions are not finite")
        if delay_steps > actions.shape[0]:
            raise PolicyInputError(f"delay_steps {delay_steps} exceeds the {actions.shape[0]} committed actions")
        return actions


def _check_agreement(config: EmbodimentConfig, entry: EmbodimentEntry, manifest: Manifest, source: str) -> None:
    """The embodiment config must describe what the checkpoint was trained with."""
    head = manifest.action_head
    problems = []
    for field, mine, theirs in (
        ("action channels", config.action.names, entry.action_channels),
        ("action.mask", config.action.mask, entry.action_mask),
        ("state channels", config.state.names, entry.state_channels),
        ("state.mask", config.state.mask, entry.state_mask),
        ("action.padded_dim", config.action.padded_dim, head.action_dim),
        ("state.padded_dim", config.state.padded_dim, head.state_dim),
        ("control.chunk_length", config.control.chunk_length, entry.chunk_length),
    ):
        if mine != theirs:
            problems.append(f"{field} is {mine} in the config but {theirs} in the checkpoint")
    if not math.isclose(config.control.action_dt, entry.action_dt, rel_tol=1e-9):
        problems.append(
            f"control.action_dt is {config.control.action_dt} in the config but {entry.action_dt} in the checkpoint"
        )
    if problems:
        raise CheckpointError(source, f"embodiment {config.name!r} does not match the checkpoint: " + "; ".join(problems))
