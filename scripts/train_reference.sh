#!/usr/bin/env bash
# The reference transfer-cube checkpoint, end to end and unattended (issue 20 §2):
#   scripted demonstrations through the ROS graph -> LeRobot dataset -> training (head and vision tower, with the
#   cube's starting place as an auxiliary target; docs/evaluation.md) -> evaluation.
# Run it in the background on an otherwise idle machine; everything it does goes to $WORK/train_reference.log:
#   nohup scripts/train_reference.sh > /dev/null 2>&1 &
# Settings (environment): WORK (default ~/qwen_vla_reference), EPISODES (50), STEPS (3000), SIZE (tiny),
# STRIDE (5: every 5th 50 Hz row), SEED (0), EVAL_TRIALS (50), PYTHON (python3).
set -euo pipefail
WORK=${WORK:-$HOME/qwen_vla_reference}
EPISODES=${EPISODES:-50}
STEPS=${STEPS:-3000}
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
[ -f "$WORK/checkpoint/training.json" ] || "$PYTHON" -m qwen_vla_ros.cli train --dataset "$WORK/dataset" \
    --size "$SIZE" --output "$WORK/checkpoint" --steps "$STEPS" --stride "$STRIDE" --seed "$SEED" \
    --train-vision --object-positions "$WORK/collect.json"
echo "$(stamp) trained"
"$PYTHON" -m qwen_vla_ros.cli eval --checkpoint "$WORK/checkpoint" --protocol config/protocols/aloha_sim_ood.yaml \
    --trials "$EVAL_TRIALS" --success lifted --output "$WORK/eval" --json > "$WORK/eval.json"
echo "$(stamp) evaluated: $(head -c 300 "$WORK/eval.json"); $(uptime)"
