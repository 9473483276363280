"""Time the PyTorch peers of the crate on one case file (docs/contract.md §5): the
notebook's loss eager, the same under torch.compile, and optionally a batched rewrite
on torchvision.ops.sigmoid_focal_loss. Forward only, no autograd, like the crate's
forward kernel.

usage: bench_peers.py CASE.safetensors [N] [--compile] [--torchvision] [--device cpu|cuda]

Each variant runs 2 untimed calls, then N timed ones (default 10); the median and
minimum are printed with the largest difference of its per-image losses from the
eager ones (and from the file's expected.* losses, where present).
torch.compile (inductor) needs a C++ compiler on the CPU; its first call compiles.
"""
import argparse
import statistics
import time

import torch
from safetensors.torch import load_file

from notebook_loss import flatten_levels, notebook_losses


def load_case(path, device):
    """Heads (per-level lists), targets and expected IoU losses (or None) of a case file."""
    t = load_file(path)
    L = sum(1 for k in t if k.startswith('cls_logits.'))
    head = lambda name: [t[f'{name}.{l}'].float().to(device) for l in range(L)]  # noqa: E731
    target = lambda name, ch: t[name].float().reshape(t[name].shape[0], -1, ch).to(device)  # noqa: E731
    args = (head('cls_logits'), head('cnt_logits'), head('reg_preds'),
            target('cls_targets', 1), target('cnt_targets', 1), target('reg_targets', 4))
    expected = None
    if 'expected.cls_loss' in t:
        expected = tuple(t[f'expected.{n}_loss'].double() for n in ('cls', 'cnt', 'reg'))
    return args, expected


def eager(*args):
    return notebook_losses(*args, mode='iou')


def torchvision_batched(cls_logits, cnt_logits, reg_preds, cls_t, cnt_t, reg_t):
    """The same per-image losses without the per-image loop: all positions at once."""
    from torchvision.ops import sigmoid_focal_loss
    C = cls_logits[0].shape[1]
    cls, cnt, reg = flatten_levels(cls_logits, C), flatten_levels(cnt_logits, 1)[..., 0], flatten_levels(reg_preds, 4)
    pos = cnt_t[..., 0] > -1
    npos = pos.sum(dim=1).clamp(min=1).float()
    onehot = (torch.arange(1, C + 1, device=cls.device, dtype=cls_t.dtype) == cls_t).float()
    l_cls = sigmoid_focal_loss(cls, onehot, alpha=0.25, gamma=2.0, reduction='none').sum(dim=(1, 2))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(cnt, cnt_t[..., 0].clamp(min=0), reduction='none')
    inner = (torch.minimum(reg[..., :2], reg_t[..., :2]) + torch.minimum(reg[..., 2:], reg_t[..., 2:])).clamp(min=0)
    inter = inner[..., 0] * inner[..., 1]
    area_p = (reg[..., 0] + reg[..., 2]) * (reg[..., 1] + reg[..., 3])
    area_t = (reg_t[..., 0] + reg_t[..., 2]) * (reg_t[..., 1] + reg_t[..., 3])
    iou = inter / (area_p + area_t - inter)
    # Negatives' boxes are arbitrary (and may give NaN): select, do not multiply.
    l_iou = torch.where(pos, -iou.clamp(min=1e-6).log(), torch.zeros_like(iou))
    return l_cls / npos, torch.where(pos, bce, torch.zeros_like(bce)).sum(dim=1) / npos, l_iou.sum(dim=1) / npos


def timed(fn, args, n, device):
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    times, out = [], None
    with torch.no_grad():
        for i in range(n + 2):
            sync()
            t0 = time.perf_counter()
            out = fn(*args)
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3, out


def max_diff(a, b):
    return max(float((x.double().cpu() - y.double().cpu()).abs().max()) for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('case')
    ap.add_argument('n', nargs='?', type=int, default=10)
    ap.add_argument('--compile', action='store_true', help='also time the notebook loss under torch.compile')
    ap.add_argument('--torchvision', action='store_true', help='also time the batched torchvision rewrite')
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()

    args, expected = load_case(a.case, a.device)
    B, C = args[3].shape[0], args[0][0].shape[1]
    P = args[3].shape[1]
    print(f'{a.case}: B {B}, C {C}, P {P}; torch {torch.__version__} on {a.device}, '
          f'{torch.get_num_threads()} threads; {a.n} timed calls after 2 untimed')
    variants = [('notebook eager', eager)]
    if a.torchvision:
        variants.append(('torchvision batched', torchvision_batched))
    if a.compile:
        variants.append(('notebook torch.compile', torch.compile(eager)))
    ref = None
    for name, fn in variants:
        med, mn, out = timed(fn, args, a.n, a.device)
        ref = out if ref is None else ref
        line = f'{name:23s} median {med:9.2f} ms  min {mn:9.2f} ms  max|diff| vs eager {max_diff(out, ref):.1e}'
        if expected is not None:
            line += f'  vs expected {max_diff(out, expected):.1e}'
        print(line, flush=True)


if __name__ == '__main__':
    main()
