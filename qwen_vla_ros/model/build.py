"""Randomly initialised Qwen-VLA checkpoints that really load: ``tiny`` (tests), ``small`` (CPU
benchmarks) and ``full`` (the published shapes, for GPU benchmarks).

Qwen-VLA's weights are not public, so these checkpoints exercise the runtime, never the
policy's behaviour. Nothing is downloaded: the tokenizer is a byte-level BPE in Qwen3.5's
pre-tokenisation, trained here on the shipped embodiment prompts, with Qwen's special
tokens. Embodiment entries and normalisation statistics come from the shipped YAML configs.

``full`` is Qwen3.5-4B (hidden 2560, 32 layers in the 3:1 gated-DeltaNet/full-attention
pattern, GQA 16/4 heads of 256, FFN 9216, vocab 248320, tied embeddings) with a 24-block
1024-wide vision tower and a ~1.15B-parameter DiT. The linear-attention head counts and the
vision tower follow the Qwen3.5 defaults and the 4B-class Qwen3-VL tower; they are shapes
for timing, not a claim about the released weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qwen_vla_ros.config import EMBODIMENTS, load_embodiment, load_runtime
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.action_head import ActionHead
from qwen_vla_ros.model.checkpoint import (
    BACKBONE_DIR,
    ActionHeadSettings,
    BackboneSettings,
    EmbodimentEntry,
    Manifest,
    PromptSettings,
    SamplingSettings,
    VisionSettings,
    write_manifest,
)

if TYPE_CHECKING:
    from qwen_vla_ros.model.loading import BackendOptions

SIZES = ("tiny", "small", "full")
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SYSTEM_PROMPT = (
    "You are Qwen-VLA, a vision-language-action model. From the camera images, the embodiment "
    "description and the task, predict the robot's next actions."
)
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
INSTRUCTIONS = (
    "pick up the cube and hand it to the other arm",
    "put the spoon in the bowl",
    "open the drawer and place the block inside",
    "drive to the door and stop in front of it",
    "fold the towel in half",
)


@dataclass(frozen=True)
class SizeSpec:
    text: dict[str, Any]
    vision: dict[str, Any]
    image_size: tuple[int, int]
    feature_layers: list[int]
    head: dict[str, Any]
    tokenizer_vocab: int
    model_vocab: int | None = None  # None: the tokenizer's size
    default_steps: int = 4
    tie_word_embeddings: bool = False


def _rope(theta: float, mrope_section: list[int]) -> dict[str, Any]:
    return {
        "rope_type": "default",
        "rope_theta": theta,
        "partial_rotary_factor": 0.25,
        "mrope_section": mrope_section,
        "mrope_interleaved": True,
    }


SPECS: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        text=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=6, full_attention_interval=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            rope_parameters=_rope(10000.0, [2, 1, 1]), max_position_embeddings=4096, initializer_range=0.1,
        ),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    num_position_embeddings=64, initializer_range=0.1),
        image_size=(64, 64),
        feature_layers=[3, 5],
        head=dict(width=64, depth=2, heads=4, frequency_dim=64),
        tokenizer_vocab=512,
    ),
    "small": SizeSpec(
        text=dict(
            hidden_size=512, intermediate_size=1536, num_hidden_layers=8, full_attention_interval=4,
            num_attention_heads=8, num_key_value_heads=2, head_dim=64,
            linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64,
            rope_parameters=_rope(1_000_000.0, [3, 3, 2]), max_position_embeddings=8192,
        ),
        vision=dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512,
                    num_position_embeddings=256),
        image_size=(224, 224),
        feature_layers=[4],
        head=dict(width=256, depth=4, heads=4),
        tokenizer_vocab=2048,
    ),
    "full": SizeSpec(
        text=dict(
            hidden_size=2560, intermediate_size=9216, num_hidden_layers=32, full_attention_interval=4,
            num_attention_heads=16, num_key_value_heads=4, head_dim=256,
            linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
            rope_parameters=_rope(10_000_000.0, [11, 11, 10]), max_position_embeddings=262144,
        ),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                    num_position_embeddings=2304),
        image_size=(224, 224),
        feature_layers=[16],
        head=dict(width=1536, depth=18, heads=12, mlp_ratio=4.25),
        tokenizer_vocab=4096,
        model_vocab=248320,
        tie_word_embeddings=True,
    ),
}


def tokenizer_corpus() -> list[str]:
    prompts = [load_embodiment(name).prompt for name in EMBODIMENTS]
    return [SYSTEM_PROMPT, load_runtime().instruction, *INSTRUCTIONS, *prompts]


def build_tokenizer(vocab_size: int) -> Any:
    """A Qwen3.5 tokenizer (byte-level BPE, Qwen pre-tokenisation, Qwen special tokens) trained locally."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX, Qwen3_5Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen3_5Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def backbone_config(spec: SizeSpec, tokenizer: Any) -> Any:
    from transformers import Qwen3_5Config

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = dict(
        spec.text,
        vocab_size=spec.model_vocab or len(tokenizer),
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    return Qwen3_5Config(
        text_config=text,
        vision_config=dict(spec.vision, patch_size=16, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def embodiment_entries() -> dict[str, EmbodimentEntry]:
    entries = {}
    for name in EMBODIMENTS:
        config = load_embodiment(name)
        entries[name] = EmbodimentEntry(
            action_dt=config.control.action_dt,
            chunk_length=config.control.chunk_length,
            action_channels=config.action.names,
            action_mask=config.action.mask,
            state_channels=config.state.names,
            state_mask=config.state.mask,
            normalization=config.normalization,
        )
    return entries


def build_manifest(spec: SizeSpec) -> Manifest:
    entries = embodiment_entries()
    action_dims = {load_embodiment(name).action.padded_dim for name in entries}
    state_dims = {load_embodiment(name).state.padded_dim for name in entries}
    if len(action_dims) != 1 or len(state_dims) != 1:
        raise ValueError(f"shipped embodiments disagree on padded dims: action {action_dims}, state {state_dims}")
    head = ActionHeadSettings(
        **spec.head,
        action_dim=action_dims.pop(),
        state_dim=state_dims.pop(),
        chunk_length=max(entry.chunk_length for entry in entries.values()),
        context_dim=spec.text["hidden_size"] * len(spec.feature_layers),
    )
    return Manifest(
        backbone=BackboneSettings(feature_layers=spec.feature_layers),
        vision=VisionSettings(image_height=spec.image_size[0], image_width=spec.image_size[1]),
        prompt=PromptSettings(system=SYSTEM_PROMPT),
        action_head=head,
        sampling=SamplingSettings(default_steps=spec.default_steps),
        embodiments=entries,
    )


def image_processor() -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD)
    )


@dataclass
class BuiltModel:
    manifest: Manifest
    backbone: torch.nn.Module
    tokenizer: Any
    head: ActionHead

    def parameter_counts(self) -> dict[str, int]:
        counts = {
            "vision": sum(p.numel() for p in self.backbone.model.visual.parameters()),
            "language": sum(p.numel() for p in self.backbone.model.language_model.parameters()),
            "action_head": sum(p.numel() for p in self.head.parameters()),
        }
        counts["backbone"] = sum(p.numel() for p in self.backbone.parameters())
        return counts


def build_model(
    size: str, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> BuiltModel:
    """Random weights in memory. ``device="meta"`` builds shapes only (parameter counts, no memory)."""
    from transformers import Qwen3_5ForConditionalGeneration

    if size not in SPECS:
        raise InvalidArgumentError(f"size must be one of {list(SPECS)}, got {size!r}")
    spec = SPECS[size]
    tokenizer = build_tokenizer(spec.tokenizer_vocab)
    manifest = build_manifest(spec)
    torch.manual_seed(seed)
    with torch.device(device):
        backbone = Qwen3_5ForConditionalGeneration._from_config(backbone_config(spec, tokenizer), dtype=dtype)
        head = ActionHead(manifest.action_head).to(dtype)
    return BuiltModel(manifest, backbone.eval(), tokenizer, head.eval())


def make_checkpoint(size: str, out: str | Path, seed: int = 0) -> Path:
    """Write a loadable checkpoint directory (see ``checkpoint.py`` for the layout)."""
    from safetensors.torch import save_file

    root = Path(out).expanduser()
    if root.exists() and any(root.iterdir()):
        raise InvalidArgumentError(f"{root} exists and is not empty; choose a new directory")
    dtype = torch.bfloat16 if size == "full" else torch.float32
    built = build_model(size, seed=seed, dtype=dtype)
    backbone_dir = root / BACKBONE_DIR
    backbone_dir.mkdir(parents=True, exist_ok=True)
    built.backbone.save_pretrained(backbone_dir)
    built.tokenizer.save_pretrained(backbone_dir)
    image_processor().save_pretrained(backbone_dir)
    state = {name: tensor.contiguous() for name, tensor in built.head.state_dict().items()}
    save_file(state, str(root / built.manifest.action_head.weights))
    write_manifest(built.manifest, root)
    return root


def build_policy(size: str, device: str = "cpu", dtype: str | torch.dtype | None = None, seed: int = 0,
                 options: BackendOptions | None = None) -> Any:
    """A Policy on random weights built in memory (no checkpoint on disk): how ``full`` is benchmarked.

    Its stages are the torch backend's under ``options`` (CUDA graphs on cuda unless turned
    off), as ``load_policy`` would give for a checkpoint.
    """
    from qwen_vla_ros.model.loading import BACKENDS, BackendOptions, patch_spec, resolve_device, resolve_dtype
    from qwen_vla_ros.model.policy import Policy

    options = options or BackendOptions()
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    built = build_model(size, seed=seed, device=resolved_device, dtype=resolved_dtype)
    statistics = {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}
    policy = Policy(
        manifest=built.manifest,
        backbone_model=built.backbone.requires_grad_(False),
        tokenizer=built.tokenizer,
        patch_spec=patch_spec(built.manifest, built.backbone.config.vision_config.to_dict(), statistics),
        head=built.head.requires_grad_(False),
        device=resolved_device,
        dtype=resolved_dtype,
        source=f"random {size} (in memory)",
    )
    policy.flush_denormals = policy.flush_denormals and options.flush_denormals
    policy.stages = BACKENDS["torch"](policy, None, options)
    return policy
