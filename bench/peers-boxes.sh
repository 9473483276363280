#!/usr/bin/env bash
# The from-boxes comparison of README "From boxes" (issue 12, point 7): PyTorch's
# dense target assignment plus the notebook's loss (bench/peers/gen_box_case.py
# --time) against the crate's whole call from boxes (fcos-loss bench --boxes M),
# back to back for each M and round, on the same machine.
#
# usage: bench/peers-boxes.sh [M ...]        (default: 10 50 200 1000)
#
# Environment (defaults in brackets):
#   VENV    the virtual environment with torch [/tmp/torch]; made if missing
#   ROUNDS  rounds over the Ms, each PyTorch then the crate [1]
#   REPS    the crate's timed repetitions [9]; PyTorch times 5
#   BIN     the crate's binary [target/release/fcos-loss, built (cargo build
#           --release) first; a BIN given is used as it is]
#   OUT     where the per-round lines go, as JSON lines [/tmp/peers-boxes.jsonl]
#
# Each round prints one line per M: PyTorch's assignment and loss medians, the
# crate's loss-from-targets kernel, its roofline (the same reads, no maths), the
# loss from boxes (kernel and whole call from host slices), and
# whole call / (assignment + loss). The case is COCO-shaped: B 8, C 80, 800x1024.
# CPU timings are noisy: compare within a round.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/.."

VENV="${VENV:-/tmp/torch}"
ROUNDS="${ROUNDS:-1}"
REPS="${REPS:-9}"
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet
    BIN=target/release/fcos-loss
fi
OUT="${OUT:-/tmp/peers-boxes.jsonl}"
PY="$VENV/bin/python"
MS=("$@")
[[ ${#MS[@]} -gt 0 ]] || MS=(10 50 200 1000)

if ! "$PY" -c 'import torch, safetensors, numpy' 2>/dev/null; then
    echo "== setting up $VENV (torch, safetensors, numpy)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch safetensors numpy
fi
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/fcos-loss-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" -c 'import torch; print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")'
: > "$OUT"
printf '%5s %4s %10s %9s %11s %9s %11s %10s %8s %7s\n' round M assign_ms loss_ms targets_k_ms roof_ms boxes_k_ms call_ms ratio floor
for r in $(seq 1 "$ROUNDS"); do
    for m in "${MS[@]}"; do
        torch_line=$("$PY" "$HERE/peers/gen_box_case.py" "/tmp/peers-boxes-$m.safetensors" \
            --batch 8 --classes 80 --image 800x1024 --boxes "$m" --time 5 | tail -n 1)
        crate_json=$("$BIN" bench --preset coco --boxes "$m" --reps "$REPS" --cpu-reps 0 \
            --no-backward --json 2>/dev/null)
        TORCH_LINE="$torch_line" CRATE_JSON="$crate_json" ROUND="$r" M="$m" OUT="$OUT" python3 - <<'EOF'
import json, os, re
line = os.environ["TORCH_LINE"]
ta = float(re.search(r"assignment .*? median ([0-9.]+) ms", line).group(1))
tl = float(re.search(r"loss median ([0-9.]+) ms", line).group(1))
c = json.loads(os.environ["CRATE_JSON"])
torch = ta + tl
row = {
    "round": int(os.environ["ROUND"]), "boxes": int(os.environ["M"]),
    "torch_assign_ms": ta, "torch_loss_ms": tl,
    "kernel_ms": c["kernel_ms"], "roofline_ms": c["roofline_ms"],
    "boxes_kernel_ms": c["boxes_kernel_ms"], "boxes_call_ms": c["boxes_call_ms"],
    "boxes_over_targets": c["boxes_over_targets"],
    "call_over_torch": c["boxes_call_ms"] / torch,
    # The least a whole call could take here: the inputs read once (roofline)
    # plus what the call spends outside its kernels (upload, readback).
    "floor_over_torch": (c["roofline_ms"] + c["boxes_call_ms"] - c["boxes_kernel_ms"]) / torch,
}
with open(os.environ["OUT"], "a") as f:
    f.write(json.dumps(row) + "\n")
print(f'{row["round"]:5d} {row["boxes"]:4d} {ta:10.1f} {tl:9.1f} {row["kernel_ms"]:11.2f} '
      f'{row["roofline_ms"]:9.2f} {row["boxes_kernel_ms"]:11.2f} {row["boxes_call_ms"]:10.2f} '
      f'{row["call_over_torch"]:8.3f} {row["floor_over_torch"]:7.3f}')
EOF
    done
done
echo "== rows in $OUT"
