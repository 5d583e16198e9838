"""Training the action head of a checkpoint on a LeRobot v3.0 dataset (``qwen-vla-ros trials export --format lerobot``).

By default the Qwen3.5 backbone stays frozen (its features for every used frame are computed
once, through the same ``Policy.encode`` the runtime uses). With ``train_vision`` the vision
tower learns too: every batch's frames go through it and through the frozen language model
(the runtime's own ``Policy.features_of_pixels``), so the cached text prefix stays valid and
the gradient reaches the tower; a frozen random tower barely encodes where a small object
is (docs/evaluation.md, ``qwen-vla-ros train``). Either way the DiT flow head learns with
the flow-matching loss on the sampler's time convention:
tau runs from 0 (noise) to 1 (actions), x_tau = (1 - tau) x0 + tau x1, and the head predicts
the velocity x1 - x0 that ``euler_sample`` integrates. Targets are the next ``chunk_length``
actions from each frame (the last action repeated past an episode's end), normalised and
padded exactly as ``Policy.sample`` un-pads them; the loss covers the masked channels only.
The result is the same checkpoint layout (backbone, manifest, ``action_head.safetensors``); a trained
tower is saved with the backbone by ``save_pretrained``, so ``transformers`` still loads it.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qwen_vla_ros.errors import DatasetError, InvalidArgumentError
from qwen_vla_ros.model.checkpoint import BACKBONE_DIR
from qwen_vla_ros.model.normalization import mask_vector, to_padded
from qwen_vla_ros.model.policy import Policy


@dataclass(frozen=True)
class Frames:
    """The dataset rows training uses: state, action chunk targets, and each camera's image."""

    states: np.ndarray  # (N, state channels), robot units
    chunks: np.ndarray  # (N, chunk_length, action channels), robot units
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8 RGB
    instruction: str


def read_lerobot(root: Path, chunk_length: int, stride: int = 1, max_frames: int | None = None) -> Frames:
    """Every ``stride``-th row of a LeRobot v3.0 dataset written by this package's export."""
    import cv2
    import pyarrow.parquet as pq

    info = json.loads((root / "meta" / "info.json").read_text())
    if info.get("codebase_version") != "v3.0":
        raise DatasetError(f"{root} is not a LeRobot v3.0 dataset (codebase_version {info.get('codebase_version')!r})")
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0)).to_pydict()
    states = np.asarray(data["observation.state"], np.float64)
    actions = np.asarray(data["action"], np.float64)
    episodes = np.asarray(data["episode_index"])
    rows = np.arange(0, len(states), max(1, stride))
    if max_frames is not None:
        rows = rows[:max_frames]
    chunks = np.empty((len(rows), chunk_length, actions.shape[1]))
    for n, row in enumerate(rows):
        last = row + np.flatnonzero(episodes[row:] == episodes[row]).max()  # the episode's final row
        chunks[n] = actions[np.minimum(np.arange(row, row + chunk_length), last)]
    keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    images = {}
    wanted = set(rows.tolist())
    for key in keys:
        capture = cv2.VideoCapture(str(root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)))
        kept: list[np.ndarray] = []
        index = 0
        while len(kept) < len(rows):
            ok, frame = capture.read()
            if not ok:
                raise DatasetError(f"{key}: the video ends at frame {index}, before row {rows[len(kept)]}")
            if index in wanted:
                kept.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
        images[key.removeprefix("observation.images.")] = np.stack(kept)
    tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pandas()
    instruction = str(tasks.index[0]) if len(tasks) else ""
    return Frames(states[rows], chunks, images, instruction)


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float
    frames: int


def train_head(policy: Policy, frames: Frames, steps: int, batch_size: int = 8, learning_rate: float = 3e-4,
               seed: int = 0, log: Callable[[int, float], None] | None = None,
               train_vision: bool = False) -> TrainResult:
    """Flow-matching steps on the head (and the vision tower with ``train_vision``); ``policy.set_task`` must have
    been called."""
    started = time.perf_counter()
    task = policy.task
    settings = policy.manifest.action_head
    generator = torch.Generator().manual_seed(seed)
    features_of = _trained_tower_features(policy, frames) if train_vision else _frozen_features(policy, frames)
    states = torch.from_numpy(to_padded(task.state_normalizer.normalize(frames.states), task.entry.state_mask,
                                        settings.state_dim)).to(policy.device)
    used = task.entry.chunk_length  # the head denoises settings.chunk_length rows; the policy keeps these
    if frames.chunks.shape[1] != used:
        raise DatasetError(f"targets hold {frames.chunks.shape[1]} actions; the checkpoint's chunks have {used}")
    targets = np.zeros((len(frames.chunks), settings.chunk_length, settings.action_dim), np.float32)
    targets[:, :used] = to_padded(task.action_normalizer.normalize(frames.chunks), task.entry.action_mask,
                                  settings.action_dim)
    targets_t = torch.from_numpy(targets).to(policy.device)
    channels = torch.from_numpy(mask_vector(task.entry.action_mask, settings.action_dim)).to(policy.device)
    mask = torch.zeros(settings.chunk_length, 1, device=policy.device)
    mask[:used] = 1.0
    mask = mask * channels  # (H, action_dim): kept rows x the embodiment's channels
    head = policy.head
    head.train()
    trained = list(head.parameters())
    if train_vision:
        policy.backbone_model.requires_grad_(False)  # the language model (and the cached prefix) stay as they are
        trained += list(policy.backbone_model.model.visual.parameters())
    for parameter in trained:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW(trained, lr=learning_rate)
    losses = []
    for step in range(steps):
        batch = torch.randint(0, len(targets_t), (min(batch_size, len(targets_t)),), generator=generator)
        x1 = targets_t[batch]
        x0 = torch.randn(x1.shape, generator=generator).to(policy.device) * channels
        tau = torch.rand(len(batch), generator=generator).to(policy.device)
        xt = (1.0 - tau[:, None, None]) * x0 + tau[:, None, None] * x1
        velocity = head(xt, tau, states[batch], *head.context_kv(features_of(batch)))
        loss = (((velocity - (x1 - x0)) * mask) ** 2).sum() / (mask.sum() * x1.shape[0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    head.eval()
    policy.backbone_model.requires_grad_(False)
    return TrainResult(losses, time.perf_counter() - started, len(targets_t))


def _frozen_features(policy: Policy, frames: Frames) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every frame encoded once by the frozen backbone; a batch is an index into them."""
    cameras = policy.task.cameras
    features = torch.stack([
        torch.from_numpy(policy.encode({c: frames.images[c][n] for c in cameras}, frames.states[n]))
        for n in range(len(frames.states))
    ]).to(policy.device)
    return lambda batch: features[batch]


def _trained_tower_features(policy: Policy, frames: Frames) -> Callable[[torch.Tensor], torch.Tensor]:
    """Each batch's frames through the vision tower and the frozen language model, with grad; the tower's input
    (resized, patched pixels) is prepared once."""
    task = policy.task
    pixels = [policy.pixels([frames.images[c][n] for c in task.cameras]) for n in range(len(frames.states))]
    return lambda batch: torch.cat([policy.features_of_pixels(task, pixels[n]) for n in batch.tolist()])


def save_trained(policy: Policy, source: Path, out: Path, vision_trained: bool = False) -> Path:
    """The source checkpoint with the trained head's weights in its place (and the backbone's, when its vision
    tower was trained)."""
    from safetensors.torch import save_file

    if out.exists() and any(out.iterdir()):
        raise InvalidArgumentError(f"{out} exists and is not empty; choose a new directory")
    shutil.copytree(source, out, dirs_exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in policy.head.state_dict().items()}
    save_file(state, str(out / policy.manifest.action_head.weights))
    if vision_trained:
        policy.backbone_model.save_pretrained(out / BACKBONE_DIR)
    return out
