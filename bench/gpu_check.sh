#!/usr/bin/env bash
# Every GPU check of issue 9 in one call of the device tool, sized to leave time for a rerun
# inside a 15-minute device budget:
#   1. python -m bench.gpu: full size, torch + CUDA graphs vs torch eager, 1 and 3 cameras and RTC;
#   2. the GPU tests: CUDA-graph capture vs eager, onnxruntime's CUDA/TensorRT providers vs torch,
#      TensorRT engines vs torch and their reuse (each skips, saying why, where its runtime is missing).
#
#   here, once:       bash scripts/device_wheels.sh    # .whl/: what the device image lacks, for its Python 3.12
#   on the device:    run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#   without a GPU:    GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny GPU_CHECK_WHEELS= PYTHON=.venv/bin/python \
#                       bash bench/gpu_check.sh
#
# Writes summary.txt (versions, exit status and time of each step, a line per bench case),
# bench.jsonl (the reports), bench.log and pytest.log under $OUT (default bench/results/gpu-check),
# and ends by printing the summary.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/bench/results/gpu-check}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SIZE="${GPU_CHECK_SIZE:-full}"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS-.whl}"  # empty: use the packages the Python already has
GPU_TESTS=(test/test_cuda_graphs.py test/test_onnx_backend.py test/test_tensorrt_logic.py
           test/test_model_checkpoint.py test/test_model_parity.py)
mkdir -p "$OUT"
summary="$OUT/summary.txt"
export PYTHONUNBUFFERED=1

if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=/tmp/gpu-check-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
  "$PY" - <<'EOF'
import importlib
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)})" if torch.cuda.is_available() else "")
for name in ("transformers", "onnx", "onnxruntime", "tensorrt", "pydantic"):
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a report line, whatever the failure
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
        continue
    extra = f", providers {module.get_available_providers()}" if name == "onnxruntime" else ""
    print(f"{name} {module.__version__}{extra}")
EOF
} > "$summary" 2>&1

step() {  # name, seconds, command...: the exit status and time go to the summary
  local name=$1 seconds=$2 start=$SECONDS status
  shift 2
  timeout "$seconds" "$@"
  status=$?
  echo "$name: exit $status after $((SECONDS - start)) s$([ "$status" = 124 ] && echo " (timed out)")" >> "$summary"
}

step bench 240 "$PY" -m bench.gpu --size "$SIZE" --device "$DEVICE" > "$OUT/bench.jsonl" 2> "$OUT/bench.log"
"$PY" - "$OUT/bench.jsonl" >> "$summary" 2>&1 <<'EOF'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    ours, eager = r["stages"]["total"], r["baseline"]["stages"]["total"]
    print(f"{r['backend']} {r['dtype']}, {r['cameras']} camera(s), RTC delay {r['rtc_delay_steps']}: "
          f"p50 {ours['p50_ms']:.2f} ms (p99 {ours['p99_ms']:.2f}) vs eager p50 {eager['p50_ms']:.2f} ms "
          f"(p99 {eager['p99_ms']:.2f}): {r['speedup_p50']:.2f}x, actions differ by {r['baseline']['max_abs_action_diff']:.2e}"
          + (f", peak {r['memory']['device_peak_allocated_mb']:.0f} MB on the device" if "device_peak_allocated_mb" in r["memory"] else ""))
EOF
step tests 300 "$PY" -m pytest -q -rs -p no:cacheprovider "${GPU_TESTS[@]}" > "$OUT/pytest.log" 2>&1
tail -n 25 "$OUT/pytest.log" | grep -E "passed|failed|error|SKIPPED|FAILED" >> "$summary"
cat "$summary"
