#!/usr/bin/env python3
"""Plot the crate's batch-size scaling sweep: bench/scaling.csv -> bench/scaling.png.

The CSV comes from the crate (COCO shape, C = 80, 800x1024, B = 1..32):

    WGPU_BACKEND=vulkan FCOS_BENCH=scaling cargo bench --bench loss

and this script needs only matplotlib (e.g. the /tmp/torch venv of bench/peers.sh
after `/tmp/torch/bin/pip install matplotlib`):

    /tmp/torch/bin/python bench/scaling.py [bench/scaling.csv] [bench/scaling.png]
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "scaling.csv")
dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "scaling.png")

with open(src, newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["batch"]))
if not rows:
    sys.exit(f"{src} has no rows")

b = [int(r["batch"]) for r in rows]
col = lambda k: [float(r[k]) for r in rows]  # noqa: E731
kernel, kmin = col("kernel_ms"), col("kernel_min_ms")
roof, call = col("roofline_ms"), col("call_ms")
gbs = col("gb_per_s")
r0 = rows[0]
shape = f"C = {r0['classes']}, {r0['height']}x{r0['width']}, {r0['positions']} positions/image"
clock = "timestamp queries" if r0["timestamps"] == "true" else "wall clock of device calls"

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
ax.plot(b, kernel, "o-", label="fused kernel (median)")
ax.plot(b, kmin, ".", color="C0", alpha=0.5, label="fused kernel (min)")
ax.plot(b, roof, "s--", label="roofline kernel (median)")
ax.plot(b, call, "^:", label="whole call from host slices (median)")
# Linear scaling through the largest batch's kernel time.
ax.plot(b, [kernel[-1] * x / b[-1] for x in b], color="grey", lw=0.8, label="linear in B")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks(b, [str(x) for x in b])
ax.set_xlabel("batch size B")
ax.set_ylabel("ms")
ax.set_title("time per call")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)

ax2.plot(b, [k / x for k, x in zip(kernel, b)], "o-", label="fused kernel")
ax2.plot(b, [k / x for k, x in zip(roof, b)], "s--", label="roofline kernel")
ax2.set_xscale("log", base=2)
ax2.set_xticks(b, [str(x) for x in b])
ax2.set_xlabel("batch size B")
ax2.set_ylabel("ms per image")
ax2.set_ylim(bottom=0)
ax2.set_title("kernel time per image")
ax2.grid(True, alpha=0.3)
for x, y, g in zip(b, [k / x for k, x in zip(kernel, b)], gbs):
    ax2.annotate(f"{g:.1f} GB/s", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
ax2.legend(fontsize=8)

fig.suptitle(f"fcos-loss forward kernel vs batch size on {r0['adapter']}\n{shape}; kernel times from {clock}", fontsize=9)
fig.tight_layout()
fig.savefig(dst, dpi=120)
print(f"wrote {dst}")
