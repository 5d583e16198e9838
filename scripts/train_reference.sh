#!/usr/bin/env bash
# The reference transfer-cube checkpoint, end to end and unattended (issue 20 §2):
#   scripted demonstrations through the ROS graph -> LeRobot dataset -> training (head and vision tower, with the
#   cube's starting place as an auxiliary target; then the head alone, twice; docs/evaluation.md) -> evaluation.
# Run it in the background on an otherwise idle machine; everything it does goes to $WORK/train_reference.log:
#   nohup scripts/train_reference.sh > /dev/null 2>&1 &
# Settings (environment): WORK (default ~/qwen_vla_reference), EPISODES (50), STEPS (3000, stage 1),
# HEAD_STEPS (5000, stage 2), POLISH_STEPS (8000, stage 3), SIZE (tiny),
# STRIDE (5: every 5th 50 Hz row), SEED (0), EVAL_TRIALS (50), PYTHON (python3).
set -euo pipefail
WORK=${WORK:-$HOME/qwen_vla_reference}
EPISODES=${EPISODES:-50}
STEPS=${STEPS:-3000}
HEAD_STEPS=${HEAD_STEPS:-5000}
POLISH_STEPS=${POLISH_STEPS:-8000}
SIZE=${SIZE:-tiny}
STRIDE=${STRIDE:-5}
SEED=${SEED:-0}
EVAL_TRIALS=${EVAL_TRIALS:-50}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
exec >>"$WORK/train_reference.log" 2>&1
cd "$REPO"
stamp() { date -u +%FT%TZ; }
echo "$(stamp) start: episodes=$EPISODES steps=$STEPS size=$SIZE stride=$STRIDE seed=$SEED; $(uptime)"
[ -f "$WORK/collect.json" ] || "$PYTHON" -m qwen_vla_ros.cli collect --episodes "$EPISODES" --seed "$SEED" \
    --success transferred --output "$WORK/demos" --json > "$WORK/collect.json"
echo "$(stamp) collected"
[ -f "$WORK/dataset/meta/info.json" ] || "$PYTHON" -m qwen_vla_ros.cli trials export "$WORK/demos" \
    --format lerobot --outcome success --out "$WORK/dataset"
echo "$(stamp) exported"
# Stage 1: the vision tower and the head together (about 0.6-0.9 s a step); stage 2: the head alone on the trained
# tower's frozen features (about 0.1 s a step), which fits it far better in the same time (docs/evaluation.md).
[ -f "$WORK/vision/training.json" ] || "$PYTHON" -m qwen_vla_ros.cli train --dataset "$WORK/dataset" \
    --size "$SIZE" --output "$WORK/vision" --steps "$STEPS" --stride "$STRIDE" --seed "$SEED" \
    --train-vision --object-positions "$WORK/collect.json"
echo "$(stamp) trained the tower"
[ -f "$WORK/head/training.json" ] || "$PYTHON" -m qwen_vla_ros.cli train --dataset "$WORK/dataset" \
    --init "$WORK/vision" --output "$WORK/head" --steps "$HEAD_STEPS" --stride "$STRIDE" --seed "$((SEED + 1))"
echo "$(stamp) trained the head"
# Stage 3: the head alone again, at a third of the learning rate.
[ -f "$WORK/checkpoint/training.json" ] || "$PYTHON" -m qwen_vla_ros.cli train --dataset "$WORK/dataset" \
    --init "$WORK/head" --output "$WORK/checkpoint" --steps "$POLISH_STEPS" --stride "$STRIDE" \
    --seed "$((SEED + 2))" --lr 1e-4
echo "$(stamp) polished the head"
"$PYTHON" -m qwen_vla_ros.cli eval --checkpoint "$WORK/checkpoint" --protocol config/protocols/aloha_sim_ood.yaml \
    --trials "$EVAL_TRIALS" --success lifted --output "$WORK/eval" --json > "$WORK/eval.json"
echo "$(stamp) evaluated: $(head -c 300 "$WORK/eval.json"); $(uptime)"
