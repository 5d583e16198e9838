"""``qwen-vla-ros train``: a checkpoint's action head trained on a LeRobot dataset (``model.training``)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from qwen_vla_ros.errors import InvalidArgumentError


def _train(args: argparse.Namespace) -> int:
    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.model.build import make_checkpoint
    from qwen_vla_ros.model.loading import load_policy
    from qwen_vla_ros.model.training import (
        fitted_entry,
        joint_channels,
        object_targets,
        read_lerobot,
        save_trained,
        train_head,
    )

    if args.steps < 1:
        raise InvalidArgumentError(f"--steps must be >= 1, got {args.steps}")
    if not args.min_std > 0:
        raise InvalidArgumentError(f"--min-std must be > 0, got {args.min_std}")
    if args.object_positions and not args.train_vision:
        raise InvalidArgumentError("--object-positions trains the vision tower: add --train-vision")
    dataset, out = Path(args.dataset).expanduser(), Path(args.output).expanduser()
    if not (dataset / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{dataset} is not a LeRobot dataset (no meta/info.json)")
    if out.exists() and any(out.iterdir()):
        raise InvalidArgumentError(f"--output {out} exists and is not empty; choose a new directory")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="qwen_vla_train_") as scratch:
        source = Path(args.init).expanduser() if args.init else make_checkpoint(args.size, Path(scratch) / "init", args.seed)
        policy = load_policy(source)
        embodiment = load_embodiment(args.embodiment)
        frames = read_lerobot(dataset, embodiment.control.chunk_length, args.stride, args.max_frames)
        relative = [] if args.absolute_actions else joint_channels(embodiment)
        manifest_entry = policy.manifest.embodiments[embodiment.name]
        policy.manifest.embodiments[embodiment.name] = fitted_entry(manifest_entry, frames, relative, args.min_std)
        policy.set_task(embodiment, frames.instruction)
        objects = (object_targets(dataset, frames, Path(args.object_positions).expanduser(), args.object_seconds)
                   if args.object_positions else None)
        trained = "the head and the vision tower" if args.train_vision else "the head"
        say(f"training {trained} of {source} on {len(frames.states)} frames of {dataset} for {args.steps} steps")
        log_every = max(1, args.steps // 20)

        def log_step(step: int, loss: float) -> None:
            if step % log_every == 0:
                say(f"step {step:6d}  loss {loss:.4f}")

        result = train_head(policy, frames, args.steps, args.batch_size, args.lr, args.seed, log_step,
                            train_vision=args.train_vision, objects=objects, object_weight=args.object_weight)
        save_trained(policy, source, out, vision_trained=args.train_vision)
    record = {"dataset": str(dataset.resolve()), "init": str(args.init or f"random {args.size}, seed {args.seed}"),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "stride": args.stride, "train_vision": args.train_vision, "frames": result.frames,
              "relative_actions": relative, "min_std": args.min_std,
              "object_positions": args.object_positions, "object_seconds": args.object_seconds,
              "object_weight": args.object_weight, "object_losses": result.object_losses,
              "seconds": round(result.seconds, 1),
              "instruction": frames.instruction, "command": " ".join(sys.argv), "losses": result.losses}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    plot_curve(result.losses, result.object_losses, out / "training.png", f"{out.name}: {args.steps} steps")
    first, last = result.losses[: max(1, len(result.losses) // 10)], result.losses[-max(1, len(result.losses) // 10):]
    print(f"trained {out}: loss {sum(first) / len(first):.4f} -> {sum(last) / len(last):.4f} "
          f"in {result.seconds:.0f} s; log in {out / 'training.json'}")
    return 0


def plot_curve(losses: list[float], object_losses: list[float], path: Path, title: str) -> None:
    """The training curve a shipped checkpoint carries: every step's loss, and its running mean over 1/50 of the
    run (a single batch's loss is noisy); the object readout's loss beside it when it was trained."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0))
    axis = figure.subplots()
    window = max(1, len(losses) // 50)
    for name, values, colour in (("flow matching", losses, "#4878a8"), ("object readout", object_losses, "#c06030")):
        if not values:
            continue
        axis.plot(values, color=colour, alpha=0.25, linewidth=0.6)
        mean = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(np.arange(len(mean)) + window - 1, mean, color=colour, label=f"{name} (running mean of {window})")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a checkpoint's action head on a LeRobot dataset (CPU)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset (trials export --format lerobot)")
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny", help="random start checkpoint size")
    parser.add_argument("--init", default=None, help="start from this checkpoint instead of a random one")
    parser.add_argument("--output", required=True, help="new checkpoint directory")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (2000)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step (16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (3e-4)")
    parser.add_argument("--stride", type=int, default=1, help="use every N-th dataset row (1)")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many rows")
    parser.add_argument("--embodiment", default="aloha", help="embodiment the dataset was recorded with (aloha)")
    parser.add_argument("--absolute-actions", action="store_true",
                        help="predict joints as absolute positions, not as offsets from the observed state")
    parser.add_argument("--min-std", type=float, default=0.02,
                        help="floor of the dataset statistics' std, robot units (0.02)")
    parser.add_argument("--train-vision", action="store_true",
                        help="train the vision tower too, through the frozen language model (slower per step)")
    parser.add_argument("--object-positions", default=None, metavar="COLLECT_JSON",
                        help="train the tower to say where the object started too (needs --train-vision): the JSON "
                             "line 'qwen-vla-ros collect --json' printed for the dataset's trials")
    parser.add_argument("--object-seconds", type=float, default=3.0,
                        help="rows this early in an episode, before the expert moves the object, get its place (3.0)")
    parser.add_argument("--object-weight", type=float, default=1.0, help="weight of the object loss (1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start, the batches and the noise (0)")
    parser.set_defaults(handler=_train)
