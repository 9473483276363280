#!/usr/bin/env bash
# One prepared run of the benchmark presets on whatever adapter wgpu picks, for a
# machine with a real GPU: no build there, only the binary built here.
#
#   bench/gpu-run.sh [BIN] [OUTDIR]
#     BIN      the fcos-loss binary (default target/release/fcos-loss)
#     OUTDIR   where results-<adapter>.md and .json go (default bench)
#   env: PRESETS="voc coco coco-large" (default)   REPS=10   BOXES=50 (0: skip)
#        BUDGET_S=270 (presets left when it runs out are skipped, and said so)
#
# For each preset: `fcos-loss bench --preset P --json` (forward and backward
# kernels, their memory rooflines, host and device calls; the CPU reference is
# skipped), and for coco the loss from BOXES ground-truth boxes per image as well.
# Each dtype the binary's `bench --dtype` offers is run (f32 only where it has no
# --dtype). Writes one JSON array of the reports and a Markdown table with kernel,
# roofline, kernel ÷ roofline and GB/s (the bytes the forward pass must read over
# its kernel time), and exits non-zero when a preset fails.
#
# On the GPU machine, with the Vulkan loaders unpacked first (see the device
# notes), e.g.: for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
#   export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
#   WGPU_BACKEND=vulkan bench/gpu-run.sh target/release/fcos-loss "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/fcos-loss}"
out="${2:-bench}"
presets="${PRESETS:-voc coco coco-large}"
reps="${REPS:-10}"
boxes="${BOXES:-50}"
budget="${BUDGET_S:-270}"
mkdir -p "$out"
start=$(date +%s)
dtypes="f32"
if "$bin" bench --help | grep -q -- "--dtype"; then
    dtypes="f32 f16 bf16"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
skipped=()
n=0
for preset in $presets; do
    for dtype in $dtypes; do
        if (($(date +%s) - start > budget)); then
            skipped+=("$preset/$dtype")
            continue
        fi
        args=(bench --preset "$preset" --reps "$reps" --cpu-reps 0 --json)
        [ "$dtype" != f32 ] && args+=(--dtype "$dtype")
        [ "$preset" = coco ] && [ "$boxes" != 0 ] && [ "$dtype" = f32 ] && args+=(--boxes "$boxes")
        if "$bin" "${args[@]}" >"$tmp/$n.json" 2>"$tmp/$n.err"; then
            python3 - "$tmp/$n.json" "$preset" "$dtype" <<'PY'
import json, sys
path, preset, dtype = sys.argv[1:]
r = json.load(open(path))
r["preset"], r["dtype"] = preset, r.get("dtype", dtype)
json.dump(r, open(path, "w"))
PY
            echo "$preset ($dtype): done in $(($(date +%s) - start)) s" >&2
            n=$((n + 1))
        else
            echo "$preset ($dtype) failed:" >&2
            cat "$tmp/$n.err" >&2
            failed=1
        fi
    done
done
python3 - "$tmp" "$n" "$out" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "${skipped[*]:-}" <<'PY'
import json, re, sys
tmp, n, out, when, commit, skipped = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
reports = [json.load(open(f"{tmp}/{i}.json")) for i in range(n)]
if not reports:
    sys.exit("no preset ran")
adapter = reports[0]["adapter"]
slug = re.sub(r"[^a-z0-9]+", "-", adapter.lower()).strip("-")[:60]
json.dump(reports, open(f"{out}/results-{slug}.json", "w"), indent=1)
def ms(x):
    return "—" if x is None else f"{x:.3f}"
lines = [
    f"# fcos-loss on {adapter}",
    "",
    f"- **When**: {when}, commit `{commit}`, `bench/gpu-run.sh` (medians of the timed repetitions; kernel times from timestamp queries where the adapter has them: {', '.join(sorted({str(r['timestamps']) for r in reports}))}).",
    "- **GB/s**: the bytes the forward pass must read (inputs, once) over its kernel time.",
    "",
    "| preset | dtype | B | C | image | kernel ms | roofline ms | kernel ÷ roofline | GB/s | backward ms | backward roofline ms | host call ms | device call ms | from boxes ms |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
for r in reports:
    h, w = r["image"]
    lines.append(
        f"| {r['preset']} | {r['dtype']} | {r['batch']} | {r['classes']} | {h}×{w} | {ms(r['kernel_ms'])} | {ms(r['roofline_ms'])} | "
        f"{r['kernel_over_roofline']:.2f} | {r['gb_per_s']:.1f} | {ms(r.get('backward_kernel_ms'))} | {ms(r.get('backward_roofline_ms'))} | "
        f"{ms(r['call_ms'])} | {ms(r['device_call_ms'])} | {ms(r.get('boxes_kernel_ms'))} |"
    )
if skipped:
    lines += ["", f"Skipped for time: {skipped}."]
open(f"{out}/results-{slug}.md", "w").write("\n".join(lines) + "\n")
print(f"wrote {out}/results-{slug}.md and .json ({len(reports)} reports)")
PY
exit "$failed"
