"""The checkpoint directory: what ``qwen_vla.json`` holds and which files must be beside it.

Qwen-VLA's chunk length, step count, prompt template and normalisation are unpublished, so
they are checkpoint configuration, never constants. Reading and checking the manifest needs
no torch, so nodes and tools can describe a checkpoint cheaply; every fault names the file
and what is wrong with it, because a half-written or mismatched checkpoint would otherwise
load with random weights or silently wrong statistics.

Layout::

    CHECKPOINT/
      qwen_vla.json              manifest (this module)
      action_head.safetensors    DiT weights (name set in the manifest)
      backbone/                  a standard Qwen3.5 checkpoint: config.json, *.safetensors,
                                 tokenizer files, preprocessor_config.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from qwen_vla_ros.config.base import StrictModel
from qwen_vla_ros.config.loader import describe_validation_error
from qwen_vla_ros.config.spaces import Normalization
from qwen_vla_ros.errors import QwenVlaError

MANIFEST = "qwen_vla.json"
BACKBONE_DIR = "backbone"
BACKBONE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
DEFAULT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{embodiment}\nTask: {instruction}\nObservation:"
)
MIN_STEPS = 1
MAX_STEPS = 10


class CheckpointError(QwenVlaError, ValueError):
    """A checkpoint file is missing or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class BackboneSettings(StrictModel):
    feature_layers: list[int] = Field(
        min_length=1,
        description="indices into transformers' hidden_states (1 = output of the first decoder layer); "
        "features of several layers are concatenated along the channel axis",
    )

    @field_validator("feature_layers")
    @classmethod
    def _positive_unique(cls, layers: list[int]) -> list[int]:
        if any(layer < 1 for layer in layers):
            raise ValueError(f"feature layers count from 1 (0 is the token embedding), got {layers}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"feature layers must be unique, got {layers}")
        return layers


class VisionSettings(StrictModel):
    """Every camera image is resized to this resolution before Qwen3.5 patchification."""

    image_height: int = Field(gt=0)
    image_width: int = Field(gt=0)


class PromptSettings(StrictModel):
    system: str
    template: str = Field(default=DEFAULT_TEMPLATE, description="uses {system}, {embodiment} and {instruction}")

    @field_validator("template")
    @classmethod
    def _has_fields(cls, template: str) -> str:
        missing = [f for f in ("{system}", "{embodiment}", "{instruction}") if f not in template]
        if missing:
            raise ValueError(f"template lacks {missing}")
        return template


class ActionHeadSettings(StrictModel):
    weights: str = "action_head.safetensors"
    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    action_dim: int = Field(gt=0, description="padded action space shared by all embodiments")
    state_dim: int = Field(gt=0, description="padded proprioceptive state space")
    chunk_length: int = Field(gt=0, description="action tokens the DiT denoises")
    context_dim: int = Field(gt=0, description="backbone hidden size times the number of feature layers")
    frequency_dim: int = Field(default=256, gt=0, description="sinusoidal timestep embedding size")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ActionHeadSettings:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.frequency_dim % 2:
            raise ValueError(f"frequency_dim must be even, got {self.frequency_dim}")
        return self


class SamplingSettings(StrictModel):
    default_steps: int = Field(ge=MIN_STEPS, le=MAX_STEPS, description="Euler flow-matching steps")


class EmbodimentEntry(StrictModel):
    """What the checkpoint was trained with for one embodiment; the config must agree."""

    action_dt: float = Field(gt=0)
    chunk_length: int = Field(gt=0)
    action_channels: list[str] = Field(min_length=1)
    action_mask: list[int]
    state_channels: list[str] = Field(min_length=1)
    state_mask: list[int]
    normalization: Normalization | None = Field(
        default=None, description="None: use the embodiment config's statistics"
    )
    relative_actions: list[str] = Field(
        default_factory=list,
        description="action channels the head predicts as offsets from the state channel of the same name "
        "(model.normalization.RelativeChannels); normalization.action describes the offsets for these",
    )

    @model_validator(mode="after")
    def _sizes(self) -> EmbodimentEntry:
        for part, names, mask in (
            ("action", self.action_channels, self.action_mask),
            ("state", self.state_channels, self.state_mask),
        ):
            if len(names) != len(mask):
                raise ValueError(f"{part}_mask has {len(mask)} entries but there are {len(names)} {part} channels")
            if len(set(mask)) != len(mask):
                raise ValueError(f"{part}_mask has repeated indices {mask}")
        if self.normalization is not None:
            for part, stats, count in (
                ("action", self.normalization.action, len(self.action_channels)),
                ("state", self.normalization.state, len(self.state_channels)),
            ):
                if len(stats) != count:
                    raise ValueError(f"normalization.{part} has {len(stats)} values but there are {count} channels")
        unknown = [n for n in self.relative_actions if n not in self.action_channels or n not in self.state_channels]
        if unknown:
            raise ValueError(f"relative_actions {unknown} must be both action and state channels")
        if len(set(self.relative_actions)) != len(self.relative_actions):
            raise ValueError(f"relative_actions has repeated channels {self.relative_actions}")
        return self


class Manifest(StrictModel):
    format: Literal["qwen_vla"] = "qwen_vla"
    version: Literal[1] = 1
    backbone: BackboneSettings
    vision: VisionSettings
    prompt: PromptSettings
    action_head: ActionHeadSettings
    sampling: SamplingSettings
    embodiments: dict[str, EmbodimentEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _fits_head(self) -> Manifest:
        head = self.action_head
        for name, entry in self.embodiments.items():
            if entry.chunk_length > head.chunk_length:
                raise ValueError(
                    f"embodiment {name!r} chunk_length {entry.chunk_length} exceeds the head's {head.chunk_length}"
                )
            for part, mask, dim in (
                ("action", entry.action_mask, head.action_dim),
                ("state", entry.state_mask, head.state_dim),
            ):
                outside = [i for i in mask if not 0 <= i < dim]
                if outside:
                    raise ValueError(f"embodiment {name!r} {part}_mask indices {outside} lie outside [0, {dim})")
        return self


@dataclass(frozen=True)
class CheckpointFiles:
    """A checked checkpoint directory: the manifest plus the parsed backbone JSON files."""

    root: Path
    manifest: Manifest
    backbone_config: dict[str, Any]
    preprocessor_config: dict[str, Any]

    @property
    def backbone_dir(self) -> Path:
        return self.root / BACKBONE_DIR

    @property
    def head_weights(self) -> Path:
        return self.root / self.manifest.action_head.weights


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(path, "file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, f"top level must be an object, got {type(data).__name__}")
    return data


def parse_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate(_read_json(path))
    except ValidationError as exc:
        raise CheckpointError(path, "; ".join(describe_validation_error(exc))) from exc


def check_consistency(files: CheckpointFiles) -> None:
    """Cross-file checks: the manifest must describe the backbone that sits beside it."""
    manifest, root = files.manifest, files.root
    text = files.backbone_config.get("text_config", {})
    vision = files.backbone_config.get("vision_config", {})
    config_path = files.backbone_dir / "config.json"
    for key in ("hidden_size", "num_hidden_layers"):
        if key not in text:
            raise CheckpointError(config_path, f"text_config.{key} is missing")
    for key in ("patch_size", "spatial_merge_size", "temporal_patch_size"):
        if key not in vision:
            raise CheckpointError(config_path, f"vision_config.{key} is missing")
    layers, depth = manifest.backbone.feature_layers, text["num_hidden_layers"]
    if max(layers) > depth:
        raise CheckpointError(
            root / MANIFEST, f"backbone.feature_layers {layers} exceed the backbone's {depth} layers ({config_path})"
        )
    expected_context = text["hidden_size"] * len(layers)
    if manifest.action_head.context_dim != expected_context:
        raise CheckpointError(
            root / MANIFEST,
            f"action_head.context_dim is {manifest.action_head.context_dim} but {len(layers)} feature layer(s) of "
            f"hidden size {text['hidden_size']} ({config_path}) give {expected_context}",
        )
    factor = vision["patch_size"] * vision["spatial_merge_size"]
    size = manifest.vision
    if size.image_height % factor or size.image_width % factor:
        raise CheckpointError(
            root / MANIFEST,
            f"vision image size {size.image_height}x{size.image_width} is not a multiple of patch_size x "
            f"spatial_merge_size = {factor} ({config_path})",
        )
    preprocessor_path = files.backbone_dir / "preprocessor_config.json"
    for key, expected in (
        ("patch_size", vision["patch_size"]),
        ("merge_size", vision["spatial_merge_size"]),
        ("temporal_patch_size", vision["temporal_patch_size"]),
    ):
        if files.preprocessor_config.get(key, expected) != expected:
            raise CheckpointError(
                preprocessor_path,
                f"{key} is {files.preprocessor_config[key]} but the vision tower ({config_path}) uses {expected}",
            )
    for key in ("image_mean", "image_std"):
        values = files.preprocessor_config.get(key)
        if not (isinstance(values, list) and len(values) == 3):
            raise CheckpointError(preprocessor_path, f"{key} must be a list of 3 numbers, got {values!r}")
    if any(not s > 0 for s in files.preprocessor_config["image_std"]):
        raise CheckpointError(preprocessor_path, "image_std must be positive")


VISION_TOKENS = {"image_token_id": "<|image_pad|>", "vision_start_token_id": "<|vision_start|>",
                 "vision_end_token_id": "<|vision_end|>"}


def check_tokenizer(backbone_dir: Path, backbone_config: dict) -> None:
    """The token ids config.json names must be the tokenizer's vision tokens, inside the embedding table.

    A tokenizer from another checkpoint would otherwise place image features on the wrong
    tokens silently, or index past the embeddings with an error that names no file.
    """
    path = backbone_dir / "tokenizer.json"
    tokenizer = _read_json(path)
    ids = {token.get("content"): token.get("id") for token in tokenizer.get("added_tokens", [])}
    vocab = tokenizer.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        ids = {**vocab, **ids}
    config_path = backbone_dir / "config.json"
    for key, content in VISION_TOKENS.items():
        if key not in backbone_config:
            raise CheckpointError(config_path, f"{key} is missing")
        if ids.get(content) != backbone_config[key]:
            raise CheckpointError(
                path, f"{content} has id {ids.get(content)} but {config_path} says {key} = {backbone_config[key]}")
    vocab_size = backbone_config.get("text_config", {}).get("vocab_size")
    largest = max((i for i in ids.values() if isinstance(i, int)), default=-1)
    if isinstance(vocab_size, int) and largest >= vocab_size:
        raise CheckpointError(path, f"token id {largest} does not fit text_config.vocab_size = {vocab_size} ({config_path})")


def read_checkpoint(path: str | Path) -> CheckpointFiles:
    """Check a checkpoint directory without loading weights; raises CheckpointError naming the file."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    manifest = parse_manifest(root / MANIFEST)
    backbone = root / BACKBONE_DIR
    if not backbone.is_dir():
        raise CheckpointError(backbone, "backbone directory is missing")
    for name in BACKBONE_FILES:
        if not (backbone / name).is_file():
            raise CheckpointError(backbone / name, "file is missing")
    if not any(backbone.glob("*.safetensors")):
        raise CheckpointError(backbone / "model.safetensors", "no backbone weights (*.safetensors) found")
    head = root / manifest.action_head.weights
    if not head.is_file():
        raise CheckpointError(head, "action head weights are missing")
    files = CheckpointFiles(
        root=root,
        manifest=manifest,
        backbone_config=_read_json(backbone / "config.json"),
        preprocessor_config=_read_json(backbone / "preprocessor_config.json"),
    )
    check_consistency(files)
    check_tokenizer(backbone, files.backbone_config)
    return files


def write_manifest(manifest: Manifest, root: Path) -> Path:
    path = root / MANIFEST
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path
