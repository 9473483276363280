"""Write an FCOS loss case file (docs/contract.md §5) with random network outputs and
random targets, scored by PyTorch with the notebook's loss (notebook_loss.py):
expected losses in IoU and GIoU mode and autograd gradients.

usage: gen_case.py OUT.safetensors [--batch B] [--classes C] [--image HxW] [--seed S]
                   [--pos-frac F[,F...]] [--f64] [--time N]

--pos-frac   fraction of positive positions, one for all images or one per image
             (e.g. 0.02,0,1: image 1 without positives, image 2 positive everywhere)
--f64        score in float64 with the log-sigmoid focal loss (finite where the
             notebook's f32 maths overflows); the file is float32 either way
--time N     then time the eager loss (no autograd) N times and print the median
             and minimum as the last line
"""
import argparse
import math
import statistics
import time

import torch
from safetensors.torch import save_file

from notebook_loss import focal_logsigmoid, focal_notebook, notebook_losses

STRIDES = (8, 16, 32, 64, 128)
HEADS = ('cls_logits', 'cnt_logits', 'reg_preds')


def level_shapes(h, w, strides=STRIDES):
    """(H_l, W_l) = (ceil(h / s_l), ceil(w / s_l)) (contract §1)."""
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def unflatten(flat, shapes):
    """[B, P, ch] -> per-level [B, ch, H_l, W_l], the inverse of the level flatten."""
    out, off = [], 0
    for h, w in shapes:
        part = flat[:, off:off + h * w, :]
        out.append(part.reshape(flat.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous())
        off += h * w
    return out


def make_case(batch, classes, shapes, seed, pos_frac):
    """Random heads (per level, NCHW) and targets ([B, P, 1], [B, P, 1], [B, P, 4])."""
    g = torch.Generator().manual_seed(seed)
    P = sum(h * w for h, w in shapes)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731

    # Class logits around the usual prior log(0.01 / 0.99) = -4.6; centerness around 0.
    cls_logits = [randn(batch, classes, h, w) * 1.5 - 4.6 for h, w in shapes]
    cnt_logits = [randn(batch, 1, h, w) for h, w in shapes]

    fracs = [float(x) for x in str(pos_frac).split(',')]
    fracs = torch.tensor([fracs[min(b, len(fracs) - 1)] for b in range(batch)])
    pos = rand(batch, P) < fracs[:, None]  # [B, P]

    cls_t = torch.where(pos, torch.randint(1, classes + 1, (batch, P), generator=g).float(),
                        torch.zeros(batch, P))
    cnt_t = torch.where(pos, rand(batch, P), torch.full((batch, P), -1.0))
    # Boxes a few strides wide; predictions scattered around the targets.
    stride = torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(shapes, STRIDES)])
    boxes = 2.0 * stride[None, :, None] * torch.exp(0.5 * randn(batch, P, 4))
    reg_t = torch.where(pos[..., None], boxes, torch.full((batch, P, 4), -1.0))
    reg_preds = unflatten(boxes * torch.exp(0.4 * randn(batch, P, 4)), shapes)

    return cls_logits, cnt_logits, reg_preds, cls_t[..., None], cnt_t[..., None], reg_t


def grad_or_zero(out, inputs):
    """d out / d inputs, zeros for an input that out does not depend on."""
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def score(heads, targets, dtype, focal):
    """Losses and autograd gradients: IoU losses and d(cls + cnt + reg)/d(heads) (batch
    means), then the GIoU losses and d(reg_loss)/d(reg_preds) in GIoU mode."""
    heads = [[x.detach().to(dtype).requires_grad_(True) for x in levels] for levels in heads]
    targets = [t.to(dtype) for t in targets]
    cls, cnt, reg = notebook_losses(*heads, *targets, mode='iou', focal=focal)
    flat = [x for h in heads for x in h]
    grads = grad_or_zero(cls.mean() + cnt.mean() + reg.mean(), flat)
    _, _, reg_giou = notebook_losses(*heads, *targets, mode='giou', focal=focal)
    grads_giou = grad_or_zero(reg_giou.mean(), heads[2])
    L = len(heads[0])
    per_head = [grads[i * L:(i + 1) * L] for i in range(3)]
    return (cls.detach(), cnt.detach(), reg.detach(), reg_giou.detach()), per_head, grads_giou


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('out')
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--classes', type=int, default=20)
    ap.add_argument('--image', default='512x512', help='HxW in pixels')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--pos-frac', default='0.015')
    ap.add_argument('--f64', action='store_true')
    ap.add_argument('--time', type=int, default=0, metavar='N')
    a = ap.parse_args()

    h, w = (int(x) for x in a.image.lower().split('x'))
    shapes = level_shapes(h, w)
    cls_l, cnt_l, reg_l, cls_t, cnt_t, reg_t = make_case(a.batch, a.classes, shapes, a.seed, a.pos_frac)
    heads, targets = (cls_l, cnt_l, reg_l), (cls_t, cnt_t, reg_t)
    dtype, focal = (torch.float64, focal_logsigmoid) if a.f64 else (torch.float32, focal_notebook)
    losses, grads, grads_giou = score(heads, targets, dtype, focal)

    t = {}
    for name, levels in zip(HEADS, heads):
        t.update({f'{name}.{l}': x for l, x in enumerate(levels)})
    t.update(cls_targets=cls_t, cnt_targets=cnt_t, reg_targets=reg_t)
    for name, v in zip(('cls_loss', 'cnt_loss', 'reg_loss', 'reg_loss_giou'), losses):
        t[f'expected.{name}'] = v
    for name, levels in zip(HEADS, grads):
        t.update({f'expected.grad.{name}.{l}': g for l, g in enumerate(levels)})
    t.update({f'expected.grad_giou.reg_preds.{l}': g for l, g in enumerate(grads_giou)})
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in t.items()}, a.out)

    P = sum(x * y for x, y in shapes)
    print(f'wrote {a.out}: B {a.batch}, C {a.classes}, image {h}x{w}, levels {shapes}, P {P}, '
          f'positives {(cnt_t > -1).sum(dim=(1, 2)).tolist()}, scored in {dtype}')
    for name, v in zip(('cls', 'cnt', 'reg', 'reg_giou'), losses):
        print(f'{name:9s} {v.tolist()}')

    if a.time:
        args = [*heads, *targets]
        times = []
        with torch.no_grad():
            for i in range(a.time + 2):
                t0 = time.perf_counter()
                notebook_losses(*args)
                if i >= 2:  # two untimed warm-up calls
                    times.append(time.perf_counter() - t0)
        print(f'notebook eager, torch {torch.__version__}, {torch.get_num_threads()} threads: '
              f'median {statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms over {a.time}')


if __name__ == '__main__':
    main()
