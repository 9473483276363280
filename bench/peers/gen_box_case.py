"""Make an FCOS case from ground-truth boxes: draws boxes, assigns targets with
gen_targets.py (docs/contract.md §7), draws predictions, and stores everything a test
needs in the tensor names of docs/contract.md §5, plus:

  gt_boxes [B, M, 4] float32, gt_classes [B, M] int64 (padding rows -1)
  expected.sums.{cls,cnt,reg,reg_giou,reg_ctr,reg_ctr_giou,num_pos,ctr} [B]
      per-image raw sums (docs/contract.md §8), float64 maths stored as float32
  expected.batch.{cls,cnt,reg,reg_giou}_loss [1]          Normalization::Batch
  expected.global_ctr.{cls,cnt,reg,reg_giou}_loss [1]     mmdet-style, one replica
  expected.grad_global_ctr.{cls_logits,cnt_logits,reg_preds}.{l}   d(cls+cnt+reg)/d input, IoU

usage: gen_box_case.py OUT.safetensors --batch B --classes C --image HxW --boxes M [--seed S]
       [--empty-image]   the last image has only padding rows (no positives)
       [--time N]        also time PyTorch: the dense target assignment and the loss
"""
import argparse, math, statistics, time
import torch
from safetensors.torch import save_file
import gen_targets
import notebook_loss


def shapes_of(h, w):
    return [(math.ceil(h / s), math.ceil(w / s)) for s in gen_targets.STRIDES]


def flat(heads, ch):
    """[B, ch, H, W] per level -> [B, P, ch] in level-major, row-major order."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, ch) for x in heads], 1)


def per_image_sums(cl, cn, rp, ct, nt, rt):
    """float64 per-image sums of every term (stable log-sigmoid focal)."""
    C = cl[0].shape[1]
    z = flat(cl, C).double()
    onehot = (torch.arange(1, C + 1, dtype=torch.float64)[None, None, :] == ct.double()).double()
    p = z.sigmoid()
    pt = p * onehot + (1 - p) * (1 - onehot)
    logpt = torch.nn.functional.logsigmoid(z) * onehot + torch.nn.functional.logsigmoid(-z) * (1 - onehot)
    w = 0.25 * onehot + 0.75 * (1 - onehot)
    focal = (-w * (1 - pt) ** 2 * logpt).sum((1, 2))
    mask = (nt[..., 0] > -1)
    x = flat(cn, 1)[..., 0].double()
    y = nt[..., 0].double()
    bce = torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-x.abs()))
    pr = flat(rp, 4).double()
    tg = rt.double()
    inner = (torch.minimum(pr[..., :2], tg[..., :2]) + torch.minimum(pr[..., 2:], tg[..., 2:])).clamp(min=0)
    inter = inner[..., 0] * inner[..., 1]
    a_p = (pr[..., 0] + pr[..., 2]) * (pr[..., 1] + pr[..., 3])
    a_t = (tg[..., 0] + tg[..., 2]) * (tg[..., 1] + tg[..., 3])
    union = a_p + a_t - inter
    iou = inter / union
    iou_l = -iou.clamp(min=1e-6).log()
    outer = (torch.maximum(pr[..., :2], tg[..., :2]) + torch.maximum(pr[..., 2:], tg[..., 2:])).clamp(min=0)
    enclose = outer[..., 0] * outer[..., 1]
    giou_l = 1 - (iou - (enclose - union) / enclose.clamp(min=1e-10))
    zero = torch.zeros_like(y)
    m = lambda v: torch.where(mask, v, zero)
    return {
        'cls': focal, 'cnt': m(bce).sum(1), 'reg': m(iou_l).sum(1), 'reg_giou': m(giou_l).sum(1),
        'reg_ctr': m(y * iou_l).sum(1), 'reg_ctr_giou': m(y * giou_l).sum(1),
        'num_pos': mask.double().sum(1), 'ctr': m(y).sum(1),
    }


def global_ctr_total(cl, cn, rp, ct, nt, rt):
    """mmdet-style objective on one replica, float32, for autograd."""
    s = {}
    C = cl[0].shape[1]
    z = flat(cl, C)
    onehot = (torch.arange(1, C + 1, dtype=torch.float32)[None, None, :] == ct).float()
    p = z.sigmoid()
    pt = p * onehot + (1 - p) * (1 - onehot)
    logpt = torch.nn.functional.logsigmoid(z) * onehot + torch.nn.functional.logsigmoid(-z) * (1 - onehot)
    w = 0.25 * onehot + 0.75 * (1 - onehot)
    focal = (-w * (1 - pt) ** 2 * logpt).sum()
    mask = nt[..., 0] > -1
    n = max(float(mask.sum()), 1.0)
    x = flat(cn, 1)[..., 0][mask]
    y = nt[..., 0][mask]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction='sum')
    pr = flat(rp, 4)[mask]
    tg = rt[mask]
    lt = torch.min(pr[:, :2], tg[:, :2]); rb = torch.min(pr[:, 2:], tg[:, 2:])
    wh = (rb + lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (pr[:, 2] + pr[:, 0]) * (pr[:, 3] + pr[:, 1]) + (tg[:, 2] + tg[:, 0]) * (tg[:, 3] + tg[:, 1]) - inter
    iou_l = -(inter / union).clamp(min=1e-6).log()
    zden = max(float(y.sum()), 1e-6)
    return focal / n + bce / n + (y * iou_l).sum() / zden


def make(batch, classes, h, w, m, seed, empty_image):
    g = torch.Generator().manual_seed(seed)
    shapes = shapes_of(h, w)
    boxes, gcls = gen_targets.random_boxes(g, batch, m, h, w, classes)
    if empty_image:
        boxes[-1] = -1.0
        gcls[-1] = -1
    ct, nt, rt = gen_targets.targets(shapes, boxes, gcls)
    cl = [torch.randn(batch, classes, a, b, generator=g) * 1.5 - 4.6 for a, b in shapes]
    cn = [torch.randn(batch, 1, a, b, generator=g) for a, b in shapes]
    # box predictions: near the target at positives, a stride-sized box elsewhere
    stride_of = torch.cat([torch.full((a * b,), float(s)) for (a, b), s in zip(shapes, gen_targets.STRIDES)])
    base = torch.where(rt > 0, rt, stride_of[None, :, None].expand_as(rt) * 2.0)
    reg_flat = base * torch.exp(torch.randn(base.shape, generator=g) * 0.4)
    rp, off = [], 0
    for a, b in shapes:
        rp.append(reg_flat[:, off:off + a * b, :].reshape(batch, a, b, 4).permute(0, 3, 1, 2).contiguous())
        off += a * b
    return shapes, boxes, gcls, cl, cn, rp, ct, nt, rt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--classes', type=int, default=20)
    ap.add_argument('--image', default='512x512')
    ap.add_argument('--boxes', type=int, default=12)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--empty-image', action='store_true')
    ap.add_argument('--time', type=int, default=0)
    a = ap.parse_args()
    h, w = map(int, a.image.split('x'))
    shapes, boxes, gcls, cl, cn, rp, ct, nt, rt = make(a.batch, a.classes, h, w, a.boxes, a.seed, a.empty_image)

    t = {'gt_boxes': boxes, 'gt_classes': gcls}
    for x in cl + cn + rp:
        x.requires_grad_(True)
    cls, cnt, reg = notebook_loss.notebook_losses(cl, cn, rp, ct, nt, rt, 'iou')
    (cls.mean() + cnt.mean() + reg.mean()).backward()
    for name, xs in (('cls_logits', cl), ('cnt_logits', cn), ('reg_preds', rp)):
        for i, x in enumerate(xs):
            t[f'expected.grad.{name}.{i}'] = x.grad.clone(); x.grad = None
    _, _, greg = notebook_loss.notebook_losses(cl, cn, rp, ct, nt, rt, 'giou')
    greg.mean().backward()
    for i, x in enumerate(rp):
        t[f'expected.grad_giou.reg_preds.{i}'] = x.grad.clone(); x.grad = None
    for x in cl + cn: x.grad = None
    global_ctr_total(cl, cn, rp, ct, nt, rt).backward()
    for name, xs in (('cls_logits', cl), ('cnt_logits', cn), ('reg_preds', rp)):
        for i, x in enumerate(xs):
            t[f'expected.grad_global_ctr.{name}.{i}'] = x.grad.clone(); x.grad = None
    cl, cn, rp = [x.detach() for x in cl], [x.detach() for x in cn], [x.detach() for x in rp]
    for i in range(len(shapes)):
        t[f'cls_logits.{i}'] = cl[i]; t[f'cnt_logits.{i}'] = cn[i]; t[f'reg_preds.{i}'] = rp[i]
    t['cls_targets'] = ct; t['cnt_targets'] = nt; t['reg_targets'] = rt
    t['expected.cls_loss'] = cls.detach(); t['expected.cnt_loss'] = cnt.detach()
    t['expected.reg_loss'] = reg.detach(); t['expected.reg_loss_giou'] = greg.detach()

    s = per_image_sums(cl, cn, rp, ct, nt, rt)
    for k, v in s.items():
        t[f'expected.sums.{k}'] = v
    n_all = max(float(s['num_pos'].sum()), 1.0)
    z_all = max(float(s['ctr'].sum()), 1e-6)
    for k, key in (('cls', 'cls'), ('cnt', 'cnt'), ('reg', 'reg'), ('reg_giou', 'reg_giou')):
        t[f'expected.batch.{k}_loss'] = (s[key].sum() / n_all).reshape(1)
    t['expected.global_ctr.cls_loss'] = (s['cls'].sum() / n_all).reshape(1)
    t['expected.global_ctr.cnt_loss'] = (s['cnt'].sum() / n_all).reshape(1)
    t['expected.global_ctr.reg_loss'] = (s['reg_ctr'].sum() / z_all).reshape(1)
    t['expected.global_ctr.reg_giou_loss'] = (s['reg_ctr_giou'].sum() / z_all).reshape(1)

    out = {}
    for k, v in t.items():
        out[k] = v.contiguous() if k == 'gt_classes' else v.float().contiguous()
    save_file(out, a.out)
    print('shapes', shapes, 'P', sum(x * y for x, y in shapes), 'positives per image', s['num_pos'].tolist())

    if a.time:
        def best(f):
            f(); ts = []
            for _ in range(a.time):
                t0 = time.perf_counter(); f(); ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts), min(ts)
        ta = best(lambda: gen_targets.targets(shapes, boxes, gcls))
        tl = best(lambda: notebook_loss.notebook_losses(cl, cn, rp, ct, nt, rt, 'iou'))
        print(f'torch {torch.__version__}: target assignment (per image, dense over boxes) median {ta[0]:.1f} ms '
              f'(min {ta[1]:.1f}); notebook loss median {tl[0]:.1f} ms (min {tl[1]:.1f})')


if __name__ == '__main__':
    main()
