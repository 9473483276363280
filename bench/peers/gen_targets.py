"""FCOS target assignment as docs/contract.md §7 defines it (the seed repository's
rule): each feature-map point takes the smallest-area ground-truth box that holds
it strictly, whose largest ltrb distance falls in the level's range, and whose
centre lies within 1.5 strides (square); ties go to the lowest box index.

Written for reference cases, in float32 with the same operation order as the contract,
so its targets are the exact values a correct implementation produces.

    targets(shapes, gt_boxes, gt_classes, strides, limit_range, radius=1.5)
      shapes      [(H_l, W_l)] per level
      gt_boxes    float32 [B, M, 4] x1 y1 x2 y2 in input-image pixels; padding rows -1
      gt_classes  [B, M] class numbers 1..C; padding rows -1 (or <= 0)
    returns cls_targets [B, P, 1] float32, cnt_targets [B, P, 1], reg_targets [B, P, 4]

    random_boxes(g, batch, m, h, w, classes)  boxes of many sizes (every level gets some),
      a share of padding rows, and some exact ties (same box twice, other class).
"""
import torch

STRIDES = [8, 16, 32, 64, 128]
LIMIT_RANGE = [[-1, 64], [64, 128], [128, 256], [256, 512], [512, 999999]]
NO_MATCH = 99999999.0


def level_points(h, w, stride):
    """Points of one level in row-major order: x = k*stride + stride//2 (float32)."""
    xs = torch.arange(w, dtype=torch.float32) * stride + (stride // 2)
    ys = torch.arange(h, dtype=torch.float32) * stride + (stride // 2)
    return xs.repeat(h), ys.repeat_interleave(w)


def level_targets(px, py, boxes, classes, stride, lo, hi, radius):
    """One image, one level. px, py: [n]; boxes [M, 4]; classes [M]."""
    n, m = px.numel(), boxes.shape[0]
    cls_t = torch.zeros(n, dtype=torch.float32)
    cnt_t = torch.full((n,), -1.0)
    reg_t = torch.full((n, 4), -1.0)
    if m == 0:
        return cls_t, cnt_t, reg_t
    x = px[:, None]
    y = py[:, None]
    l = x - boxes[None, :, 0]
    t = y - boxes[None, :, 1]
    r = boxes[None, :, 2] - x
    b = boxes[None, :, 3] - y
    ltrb = torch.stack([l, t, r, b], -1)                      # [n, M, 4]
    area = (l + r) * (t + b)
    inside = ltrb.min(-1).values > 0
    far = ltrb.max(-1).values
    in_level = (far > lo) & (far <= hi)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    dc = torch.stack([x - cx[None], y - cy[None], cx[None] - x, cy[None] - y], -1).max(-1).values
    near = dc < stride * radius
    valid = (classes > 0)[None, :]
    pos = inside & in_level & near & valid
    area = torch.where(pos, area, torch.full_like(area, NO_MATCH))
    best = area.argmin(-1)                                    # first of equal minima
    anyp = pos.any(-1)
    sel = ltrb[torch.arange(n), best]                         # [n, 4]
    lr_min = torch.minimum(sel[:, 0], sel[:, 2])
    lr_max = torch.maximum(sel[:, 0], sel[:, 2])
    tb_min = torch.minimum(sel[:, 1], sel[:, 3])
    tb_max = torch.maximum(sel[:, 1], sel[:, 3])
    cnt = ((lr_min * tb_min) / (lr_max * tb_max + 1e-10)).sqrt()
    cls_t = torch.where(anyp, classes[best].to(torch.float32), cls_t)
    cnt_t = torch.where(anyp, cnt, cnt_t)
    reg_t = torch.where(anyp[:, None], sel, reg_t)
    return cls_t, cnt_t, reg_t


def targets(shapes, gt_boxes, gt_classes, strides=STRIDES, limit_range=LIMIT_RANGE, radius=1.5):
    gt_boxes = gt_boxes.to(torch.float32)
    gt_classes = gt_classes.to(torch.int64)
    B = gt_boxes.shape[0]
    cls_all, cnt_all, reg_all = [], [], []
    for bi in range(B):
        cl, cn, rg = [], [], []
        for (h, w), s, (lo, hi) in zip(shapes, strides, limit_range):
            px, py = level_points(h, w, s)
            a, b_, c = level_targets(px, py, gt_boxes[bi], gt_classes[bi], s, lo, hi, radius)
            cl.append(a); cn.append(b_); rg.append(c)
        cls_all.append(torch.cat(cl)); cnt_all.append(torch.cat(cn)); reg_all.append(torch.cat(rg))
    return (torch.stack(cls_all)[..., None], torch.stack(cnt_all)[..., None], torch.stack(reg_all))


def random_boxes(g, batch, m, h, w, classes, pad_frac=0.2, tie_frac=0.05):
    """[B, M, 4] float32 boxes (integer and fractional corners, sizes spread over all
    levels, some outside or degenerate) and [B, M] int64 classes; -1 rows are padding."""
    size = torch.exp(torch.rand(batch, m, 2, generator=g) * 6.2) * 3.0      # 3 .. ~1500 px
    cx = torch.rand(batch, m, generator=g) * w
    cy = torch.rand(batch, m, generator=g) * h
    x1 = cx - size[..., 0] / 2
    y1 = cy - size[..., 1] / 2
    boxes = torch.stack([x1, y1, x1 + size[..., 0], y1 + size[..., 1]], -1)
    snap = torch.rand(batch, m, generator=g) < 0.5                          # some on the integer grid
    boxes = torch.where(snap[..., None], boxes.round(), boxes)
    boxes = torch.stack([boxes[..., 0].clamp(0, w - 1), boxes[..., 1].clamp(0, h - 1),
                         boxes[..., 2].clamp(1, w), boxes[..., 3].clamp(1, h)], -1).to(torch.float32)
    cls = torch.randint(1, classes + 1, (batch, m), generator=g)
    # exact duplicates with another class: equal areas, the lower index must win
    dup = torch.rand(batch, m, generator=g) < tie_frac
    src = torch.clamp(torch.arange(m) - 1, min=0)
    boxes = torch.where(dup[..., None], boxes[:, src], boxes)
    pad = torch.rand(batch, m, generator=g) < pad_frac
    boxes = torch.where(pad[..., None], torch.full_like(boxes, -1.0), boxes)
    cls = torch.where(pad, torch.full_like(cls, -1), cls)
    return boxes, cls
