"""Does a checkpoint's backbone see where the object is? A ridge probe of its features, episodes held out.

    python -m bench.object_probe --checkpoint CKPT --dataset DATASET --collect-json COLLECT.json \
        [--stride 5] [--seconds 1.5] [--folds 5]

A head trained on features that do not say where the cube is can fit the demonstrations'
actions (low loss) and still never reach the cube: the pilot reference run did exactly that
(docs/evaluation.md). This measures the cause directly. For every episode of a LeRobot dataset
exported from ``qwen-vla-ros collect`` trials, the rows of its first ``--seconds`` (before the
expert touches the cube) are encoded by the checkpoint through the runtime's own
``Policy.encode``; ridge regression on the step features (the image tokens after the backbone)
predicts the cube's initial x and y, which ``collect --json`` recorded per trial. Whole
episodes are held out (outer folds), and the ridge strength is chosen on the training episodes
alone (inner folds), so the probe can neither memorise an episode nor pick its strength on the
answer. The same probe on the resized pixels the backbone is given is the baseline. Prints one
JSON object: R² and mean absolute error per axis, and the spread of the positions.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

RIDGE_STRENGTHS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4)


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, strength: float) -> np.ndarray:
    """Ridge regression in its dual form (fewer rows than features)."""
    mean_y = train_y.mean(axis=0)
    gram = train_x @ train_x.T
    weights = np.linalg.solve(gram + strength * np.eye(len(gram)), train_y - mean_y)
    return test_x @ (train_x.T @ weights) + mean_y


def _folds(episodes: np.ndarray, count: int) -> list[np.ndarray]:
    """Row masks holding out every ``count``-th episode in turn."""
    unique = np.unique(episodes)
    return [np.isin(episodes, unique[fold::count]) for fold in range(count)]


def probe(features: np.ndarray, targets: np.ndarray, episodes: np.ndarray, folds: int) -> dict[str, Any]:
    """Held-out predictions of ``targets`` from ``features``: R² and mean absolute error per axis."""
    standard = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    predictions = np.zeros_like(targets)
    for held_out in _folds(episodes, folds):
        train_x, train_y, train_episodes = standard[~held_out], targets[~held_out], episodes[~held_out]
        inner_errors = []
        for strength in RIDGE_STRENGTHS:
            error = 0.0
            for inner in _folds(train_episodes, folds - 1):
                guess = _fit_predict(train_x[~inner], train_y[~inner], train_x[inner], strength)
                error += float(((guess - train_y[inner]) ** 2).sum())
            inner_errors.append(error)
        best = RIDGE_STRENGTHS[int(np.argmin(inner_errors))]
        predictions[held_out] = _fit_predict(train_x, train_y, standard[held_out], best)
    residual = ((predictions - targets) ** 2).sum(axis=0)
    total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    return {"r2": [round(float(v), 3) for v in 1 - residual / total],
            "mean_abs_error_m": [round(float(v), 4) for v in np.abs(predictions - targets).mean(axis=0)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True, help="LeRobot dataset exported from collect's trials")
    parser.add_argument("--collect-json", required=True, help="the JSON line `qwen-vla-ros collect --json` printed")
    parser.add_argument("--stride", type=int, default=5, help="every N-th row (5)")
    parser.add_argument("--seconds", type=float, default=1.5, help="rows from each episode's start (1.5)")
    parser.add_argument("--folds", type=int, default=5, help="outer folds over episodes (5)")
    parser.add_argument("--embodiment", default="aloha")
    args = parser.parse_args(argv)

    import cv2

    from qwen_vla_ros.config import load_embodiment
    from qwen_vla_ros.model.loading import load_policy
    from qwen_vla_ros.model.training import object_targets, read_lerobot

    dataset = Path(args.dataset).expanduser()
    embodiment = load_embodiment(args.embodiment)
    policy = load_policy(Path(args.checkpoint).expanduser())
    frames = read_lerobot(dataset, embodiment.control.chunk_length, args.stride)
    objects = object_targets(dataset, frames, Path(args.collect_json).expanduser(), args.seconds)
    early = np.flatnonzero(objects.known)
    episodes = frames.episodes
    policy.set_task(embodiment, frames.instruction)
    cameras = policy.task.cameras
    prefix = len(policy.task.prefix_features[0])
    step_features = np.stack([
        policy.encode({c: frames.images[c][n] for c in cameras}, frames.states[n])[prefix:].ravel() for n in early
    ])
    height, width = policy.patch_spec.height, policy.patch_spec.width
    pixels = np.stack([
        np.concatenate([cv2.resize(frames.images[c][n], (width, height), interpolation=cv2.INTER_AREA).ravel()
                        for c in cameras]) for n in early
    ]).astype(np.float64)
    targets = objects.xy[early]
    result = {
        "checkpoint": str(args.checkpoint), "rows": len(early), "episodes": int(len(np.unique(episodes[early]))),
        "position_spread_m": [round(float(v), 4) for v in targets.std(axis=0)],
        "step_features": probe(step_features, targets, episodes[early], args.folds),
        "pixels": probe(pixels, targets, episodes[early], args.folds),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
