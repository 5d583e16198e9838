"""How close are a checkpoint's chunks to the demonstrations, row by row, without the loop?

    python -m bench.open_loop --checkpoint CKPT --dataset DATASET [--stride 10] [--horizon-s 0.5] \
        [--reach-s 3.0] [--seed 0]

A closed-loop evaluation (``qwen-vla-ros eval``) says whether a checkpoint does the task, in
minutes of sim time per ten trials, but not why it fails. This asks the question before it: at
each row of a LeRobot dataset exported from ``qwen-vla-ros collect`` trials, the checkpoint
infers a chunk from the row's own images and state (the runtime's ``Policy.infer``, a fixed noise
seed), and its first ``--horizon-s`` of actions are compared with what the demonstration
commanded next. The same comparison for a policy that holds the row's command (the
demonstration's first action, repeated) is the no-skill baseline: a checkpoint whose error is not
well under it has not learned where to go. Rows of each episode's first ``--reach-s`` (the reach
towards the cube, the part that depends on where the cube is) are reported apart from the rest.

Run it on the training dataset and on one collected with another ``--seed``: a checkpoint close to
the demonstrations on the first and far on the second fits its episodes without generalising;
far on both, it has not fitted them. Prints one JSON object, with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def action_groups(embodiment: Any) -> dict[str, list[int]]:
    """Action channel indices of the arms' joints (rad) and of the grippers (normalised 0-1), by what they are."""
    index = {name: k for k, name in enumerate(embodiment.action.names)}
    joints = [index[j.channel] for arm in embodiment.arms for j in arm.joints if j.channel is not None]
    grippers = [index[arm.gripper.channel] for arm in embodiment.arms
                if arm.gripper is not None and arm.gripper.channel is not None]
    return {"joints_rad": joints, "grippers": grippers}


def errors(predicted: np.ndarray, demonstrated: np.ndarray, groups: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Per row, the mean absolute difference of each channel group: (rows, steps, channels) arrays in, (rows,) out."""
    difference = np.abs(predicted - demonstrated)
    return {name: difference[:, :, channels].mean(axis=(1, 2)) for name, channels in groups.items() if channels}


def summary(policy_errors: dict[str, np.ndarray], hold_errors: dict[str, np.ndarray], rows: np.ndarray
            ) -> dict[str, Any]:
    """Means over the ``rows`` selected, the policy beside the hold baseline and their ratio."""
    if not rows.any():
        return {"rows": 0}
    figures: dict[str, Any] = {"rows": int(rows.sum())}
    for name in policy_errors:
        policy, hold = float(policy_errors[name][rows].mean()), float(hold_errors[name][rows].mean())
        figures[name] = {"policy": round(policy, 4), "hold": round(hold, 4),
                         "policy_over_hold": round(policy / hold, 3) if hold > 0 else None}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True, help="LeRobot dataset exported from collect's trials")
    parser.add_argument("--stride", type=int, default=10, help="every N-th row (10)")
    parser.add_argument("--horizon-s", type=float, default=0.5, help="seconds of each chunk compared (0.5)")
    parser.add_argument("--reach-s", type=float, default=3.0, help="rows from each episode's start reported apart (3.0)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's noise seed at every row (0)")
    parser.add_argument("--embodiment", default="aloha")
    args = parser.parse_args(argv)

    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.model.loading import load_policy
    from qwen_vla_ros.model.training import read_lerobot

    embodiment = load_embodiment(args.embodiment)
    policy = load_policy(Path(args.checkpoint).expanduser())
    frames = read_lerobot(Path(args.dataset).expanduser(), embodiment.control.chunk_length, args.stride)
    policy.set_task(embodiment, frames.instruction)
    cameras = policy.task.cameras
    steps = max(1, round(args.horizon_s / embodiment.control.action_dt))
    demonstrated = frames.chunks[:, :steps]
    predicted = np.stack([
        policy.infer({c: frames.images[c][n] for c in cameras}, frames.states[n], seed=args.seed).actions[:steps]
        for n in range(len(frames.states))
    ])
    held = np.repeat(demonstrated[:, :1], steps, axis=1)
    groups = action_groups(embodiment)
    policy_errors, hold_errors = errors(predicted, demonstrated, groups), errors(held, demonstrated, groups)
    reach = frames.seconds < args.reach_s
    result = {
        "checkpoint": str(args.checkpoint), "dataset": str(args.dataset), "rows": len(frames.states),
        "episodes": int(len(np.unique(frames.episodes))), "horizon_steps": steps, "seed": args.seed,
        "reach": summary(policy_errors, hold_errors, reach),
        "after_reach": summary(policy_errors, hold_errors, ~reach),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
