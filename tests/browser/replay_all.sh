#!/usr/bin/env bash
# Captures the crate's calls on the golden cases (forward and backward, IoU and
# GIoU, with and without subgroups, from targets and from boxes, f16 and bf16
# heads) and replays them
# in headless Chromium's WebGPU (replay.mjs), which compares each with the case's
# expected values. Then checks that the harness fails a capture whose inputs were
# altered, so that a pass means something.
#
#   tests/browser/replay_all.sh [OUT]    (OUT defaults to target/webgpu-captures)
#
# Needs the release binary's dependencies built by cargo, `npm ci` in tests/browser
# and /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/webgpu-captures}"
rm -rf "$out"
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/fcos-loss
n=0
capture() {
    local name=$1
    shift
    "$bin" capture "$@" --out "$out/$name" >/dev/null
    n=$((n + 1))
}
# single: B = 1, C = 1; odd: odd sizes, an image without positives; voc: B = 2, C = 20.
for case in single_b1_c1_64x64 odd_b3_c7_100x150 voc_b2_c20_512x512; do
    for pass in forward backward; do
        for reg in iou giou; do
            flag=$([ "$pass" = backward ] && echo --backward || true)
            capture "$case-$pass-$reg-sg" "tests/data/$case.safetensors" $flag --reg "$reg"
            capture "$case-$pass-$reg-tree" "tests/data/$case.safetensors" $flag --reg "$reg" --no-subgroups
        done
    done
done
# From boxes: the cull and the assignment inside the fused pass (odd: an image
# without positives).
for case in boxes_odd_b3_c7_100x150_m9 boxes_voc_b2_c20_512x512_m12; do
    capture "$case-forward-iou-sg" "tests/data/$case.safetensors" --from-boxes
    capture "$case-backward-giou-tree" "tests/data/$case.safetensors" --from-boxes --backward --reg giou --no-subgroups
done
# Half heads (f16, bf16), read as 2-byte elements and widened in the shader.
for dtype in f16 bf16; do
    case=half_${dtype}_voc_b2_c20_512x512
    capture "$case-forward-giou-sg" "tests/data/$case.safetensors" --reg giou
    capture "$case-backward-iou-tree" "tests/data/$case.safetensors" --backward --no-subgroups
done
echo "captured $n calls into $out"
node tests/browser/replay.mjs "$out"

# A capture whose cls_logits were altered must fail.
bad="$out.altered"
rm -rf "$bad"
cp -r "$out/voc_b2_c20_512x512-forward-iou-sg" "$bad"
python3 - "$bad" <<'PY'
import json, struct, sys
d = sys.argv[1]
cap = json.load(open(f"{d}/capture.json"))
i = next(k for k, b in enumerate(cap["buffers"]) if b["label"] == "fcos cls_logits")
path = f"{d}/{cap['buffers'][i]['file']}"
data = bytearray(open(path, "rb").read())
n = len(data) // 4
for k in range(0, n, 97):
    (x,) = struct.unpack_from("<f", data, 4 * k)
    struct.pack_into("<f", data, 4 * k, x + 1.0)
open(path, "wb").write(bytes(data))
PY
if node tests/browser/replay.mjs "$bad" >"$bad.log" 2>&1; then
    echo "the replay of altered inputs passed: the harness compares nothing" >&2
    cat "$bad.log" >&2
    exit 1
fi
echo "altered inputs: the replay failed, as it must ($(tail -1 "$bad.log"))"
