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

A tower learning only through the action loss learns slowly where a small object is (a few
pixels of a 64x64 image, and one position per demonstration). ``ObjectTargets`` adds the
simulator's privileged answer while training: where the object started, for the rows recorded
before the expert can have moved it, read linearly from the step features by a readout that is
thrown away afterwards (auxiliary state prediction). The checkpoint keeps its format; the
runtime never sees the readout.
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
import yaml

from qwen_vla_ros.config import EmbodimentConfig
from qwen_vla_ros.config.spaces import MeanStd, Normalization
from qwen_vla_ros.errors import DatasetError, InvalidArgumentError
from qwen_vla_ros.model.checkpoint import BACKBONE_DIR, EmbodimentEntry, write_manifest
from qwen_vla_ros.model.normalization import RelativeChannels, mask_vector, to_padded
from qwen_vla_ros.model.policy import Policy


@dataclass(frozen=True)
class Frames:
    """The dataset rows training uses: state, action chunk targets, and each camera's image."""

    states: np.ndarray  # (N, state channels), robot units
    chunks: np.ndarray  # (N, chunk_length, action channels), robot units
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8 RGB
    instruction: str
    episodes: np.ndarray  # (N,) the dataset's episode_index of each row
    seconds: np.ndarray  # (N,) time of each row since its episode's first


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
    seconds = np.asarray(data["frame_index"], np.float64)[rows] / float(info["fps"])
    return Frames(states[rows], chunks, images, instruction, episodes[rows], seconds)


@dataclass(frozen=True)
class ObjectTargets:
    """Where the object started (world x, y in m) for each training row, and which rows may be judged by it."""

    xy: np.ndarray  # (N, 2)
    known: np.ndarray  # (N,) bool: the row was recorded before the expert can have moved the object


def object_targets(dataset: Path, frames: Frames, collect_summary: Path, seconds: float) -> ObjectTargets:
    """The object's starting place per row, from the JSON summary ``qwen-vla-ros collect --json`` printed (each
    trial's ``conditions.object_pose``, as the sim's reset drew it) and the dataset's ``episodes.yaml`` (which
    trial each episode is). Rows in the first ``seconds`` of their episode are known; the rest carry no target."""
    try:
        summary = json.loads(collect_summary.read_text().strip().splitlines()[-1])
        start = {t["trial_id"]: t["conditions"]["object_pose"][:2] for t in summary["trials"]
                 if t.get("trial_id") and "object_pose" in t.get("conditions", {})}
    except (OSError, IndexError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{collect_summary} is not the JSON summary of 'qwen-vla-ros collect --json': {exc}") from exc
    manifest = dataset / "episodes.yaml"
    if not manifest.is_file():
        raise DatasetError(f"{manifest} is missing: the dataset does not say which trial each episode is")
    trial_of = {int(entry["episode"].removeprefix("episode_")): entry["trial"]
                for entry in yaml.safe_load(manifest.read_text())}
    missing = sorted({trial_of.get(int(e), f"episode {e}") for e in np.unique(frames.episodes)} - start.keys())
    if missing:
        raise DatasetError(f"{collect_summary} has no object pose for {', '.join(map(str, missing[:3]))}"
                           + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    xy = np.array([start[trial_of[int(e)]] for e in frames.episodes], np.float64)
    return ObjectTargets(xy, frames.seconds < seconds)


def joint_channels(embodiment: EmbodimentConfig) -> list[str]:
    """Action channels that are joint positions the state also reports (unit rad or m, not a normalised gripper):
    the ones worth predicting as offsets from the state (``RelativeChannels``)."""
    state = set(embodiment.state.names)
    return [c.name for c in embodiment.action.channels if c.unit in ("rad", "m") and c.name in state]


def fitted_entry(entry: EmbodimentEntry, frames: Frames, relative: list[str], min_std: float) -> EmbodimentEntry:
    """``entry`` with ``relative`` offsets and the training rows' own mean/std, as LeRobot and openpi derive them:
    actions in model space (offsets where relative) over every chunk step, and states. A channel the
    demonstrations never moved gets ``min_std`` rather than a zero that would blow its noise up."""
    offsets = RelativeChannels.of(relative, entry.action_channels, entry.state_channels).offset(frames.chunks,
                                                                                                 frames.states)

    def stats(values: np.ndarray) -> MeanStd:
        flat = values.reshape(-1, values.shape[-1])
        return MeanStd(mean=flat.mean(axis=0).tolist(), std=np.maximum(flat.std(axis=0), min_std).tolist())

    normalization = Normalization(mode="mean_std", action=stats(offsets), state=stats(frames.states))
    return EmbodimentEntry.model_validate(
        {**entry.model_dump(), "normalization": normalization.model_dump(), "relative_actions": relative})


@dataclass
class TrainResult:
    losses: list[float]  # the flow-matching loss of every step
    seconds: float
    frames: int
    object_losses: list[float]  # the object readout's loss of every step (empty without ObjectTargets)


def train_head(policy: Policy, frames: Frames, steps: int, batch_size: int = 8, learning_rate: float = 3e-4,
               seed: int = 0, log: Callable[[int, float], None] | None = None,
               train_vision: bool = False, objects: ObjectTargets | None = None,
               object_weight: float = 1.0) -> TrainResult:
    """Flow-matching steps on the head (and the vision tower with ``train_vision``); ``policy.set_task`` must have
    been called. With ``objects`` (only with ``train_vision``: frozen features cannot learn it) each step adds
    ``object_weight`` times the readout's mean squared error on the batch's known rows, positions standardised."""
    if objects is not None and not train_vision:
        raise InvalidArgumentError("object targets train the vision tower: they need train_vision")
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
    model_chunks = task.relative.offset(frames.chunks, frames.states)
    targets[:, :used] = to_padded(task.action_normalizer.normalize(model_chunks), task.entry.action_mask,
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
    readout = _ObjectReadout(policy, objects) if objects is not None else None
    if readout is not None:
        trained += list(readout.linear.parameters())
    optimiser = torch.optim.AdamW(trained, lr=learning_rate)
    losses: list[float] = []
    object_losses: list[float] = []
    for step in range(steps):
        batch = torch.randint(0, len(targets_t), (min(batch_size, len(targets_t)),), generator=generator)
        x1 = targets_t[batch]
        x0 = torch.randn(x1.shape, generator=generator).to(policy.device) * channels
        tau = torch.rand(len(batch), generator=generator).to(policy.device)
        xt = (1.0 - tau[:, None, None]) * x0 + tau[:, None, None] * x1
        features = features_of(batch)
        velocity = head(xt, tau, states[batch], *head.context_kv(features))
        loss = (((velocity - (x1 - x0)) * mask) ** 2).sum() / (mask.sum() * x1.shape[0])
        total = loss
        if readout is not None:
            object_loss = readout.loss(features, batch)
            total = total + object_weight * object_loss
            object_losses.append(float(object_loss.detach()))
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    head.eval()
    policy.backbone_model.requires_grad_(False)
    return TrainResult(losses, time.perf_counter() - started, len(targets_t), object_losses)


class _ObjectReadout:
    """A linear map from a row's step features (every image and state token, flattened) to the object's
    standardised starting place; trained beside the head, then dropped."""

    def __init__(self, policy: Policy, objects: ObjectTargets) -> None:
        task = policy.task
        self.prefix_length = task.prefix_features.shape[1]
        step_tokens = task.step_template.shape[1]
        known_xy = objects.xy[objects.known]
        if len(known_xy) < 2:
            raise DatasetError("fewer than two rows were recorded before the object could move: no object targets")
        mean, std = known_xy.mean(axis=0), known_xy.std(axis=0) + 1e-6
        self.xy = torch.from_numpy(((objects.xy - mean) / std).astype(np.float32)).to(policy.device)
        self.known = torch.from_numpy(objects.known).to(policy.device)
        self.linear = torch.nn.Linear(step_tokens * task.prefix_features.shape[2], 2).to(policy.device)

    def loss(self, features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        known = self.known[batch]
        if not bool(known.any()):
            return features.sum() * 0.0  # no row of this batch has a target
        step = features[known, self.prefix_length:].flatten(1).float()
        return ((self.linear(step) - self.xy[batch][known]) ** 2).mean()


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
    write_manifest(policy.manifest, out)  # the entry training fitted (statistics, relative channels)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in policy.head.state_dict().items()}
    save_file(state, str(out / policy.manifest.action_head.weights))
    if vision_trained:
        policy.backbone_model.save_pretrained(out / BACKBONE_DIR)
    return out
