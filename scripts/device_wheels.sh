#!/usr/bin/env bash
# Wheels for the device tool's GPU machine (bench/gpu_check.sh): its image holds torch, onnx,
# onnxruntime, opencv, scipy and pytest for Python 3.12 but cannot reach a package index, and
# lacks pydantic (and its parts) and modern_robotics; its transformers is older than the pin
# (regex comes too, for the version that transformers asks for).
# Downloads them into .whl/ (git-ignored), about 16 MB, pinned as in the constraints file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pin() { grep -i -E "^$1==" requirements/constraints-py311.txt; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  "$(pin pydantic)" "$(pin pydantic_core)" "$(pin typing-inspection)" "$(pin annotated-types)" \
  "$(pin typing_extensions)" "$(pin modern-robotics)" "$(pin transformers)" "$(pin regex)"
ls -l .whl
