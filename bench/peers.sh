#!/usr/bin/env bash
# The PyTorch side of bench/results-lavapipe.md: the notebook's FCOS loss timed
# eager, under torch.compile, and as a batched torchvision rewrite, on the same
# COCO-shaped case the crate benches (B = 8, C = 80, 800x1024, strides 8..128).
#
# usage: bench/peers.sh [--crate]
#   --crate   right after PyTorch, time the crate on the same machine
#             (cargo run --release -- bench, WGPU_BACKEND=vulkan unless set),
#             so both sides are measured in one sitting.
#
# Environment (defaults in brackets):
#   VENV   the virtual environment with torch [/tmp/torch]; made if missing
#   PEERS  the peers scripts (gen_case.py, bench_peers.py, notebook_loss.py)
#          [bench/peers, beside this script]
#   CASE   the case file [/tmp/coco8.safetensors]
#   N      timed repetitions (after 2 untimed ones) [10]
#
# Setting up the venv downloads torch from PyPI (its default wheel, several GB with
# the CUDA libraries; it runs on the CPU where there is no GPU) and takes minutes.
# Timings on a CPU are noisy: compare ratios measured in one sitting, and rerun.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/.."

VENV="${VENV:-/tmp/torch}"
PEERS="${PEERS:-$HERE/peers}"
CASE="${CASE:-/tmp/coco8.safetensors}"
N="${N:-10}"
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch, torchvision, safetensors' 2>/dev/null; then
    echo "== setting up $VENV (torch, torchvision, safetensors)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch torchvision safetensors
fi

echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(nproc) cores"
"$PY" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads")'

# The case: the notebook's loss on a synthetic batch, with autograd gradients;
# --time N also times the eager loss once more.
echo "== gen_case.py $CASE --batch 8 --classes 80 --image 800x1024 --time $N"
"$PY" "$PEERS/gen_case.py" "$CASE" --batch 8 --classes 80 --image 800x1024 --time "$N" | tail -n 1

# Eager, batched torchvision, torch.compile (inductor; needs a C++ compiler).
echo "== bench_peers.py $CASE $N --torchvision --compile"
"$PY" "$PEERS/bench_peers.py" "$CASE" "$N" --torchvision --compile

if [[ "${1:-}" == "--crate" ]]; then
    export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/fcos-loss-xdg}"
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
    echo "== crate (WGPU_BACKEND=$WGPU_BACKEND): fcos-loss bench --preset coco --reps $N"
    cargo run --release --quiet -- bench --preset coco --reps "$N"
fi
