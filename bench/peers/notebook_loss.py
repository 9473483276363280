"""The FCOS loss of docs/contract.md §2 in PyTorch, computed the way the FCOS loss
notebook does it (FCOS-PyTorch-37.2AP, model/loss.py): levels flattened by
permute + reshape + cat, one image at a time, positives picked with a boolean mask,
the focal loss through `sigmoid(...).log()`. It is the peer the crate is measured
against: gen_case.py scores cases with it and bench_peers.py times it.

Besides the notebook's IoU loss there is the GIoU loss of the same repository, and a
focal loss on log-sigmoid (`focal_logsigmoid`) for cases scored in float64, where the
notebook's f32 `log(sigmoid(z))` would overflow (docs/contract.md §3).
"""
import torch
import torch.nn.functional as F

GAMMA = 2.0
ALPHA = 0.25


def flatten_levels(levels, channels):
    """[B, ch, H_l, W_l] per level -> [B, P, ch], levels in order (contract §1.1)."""
    batch = levels[0].shape[0]
    return torch.cat([x.permute(0, 2, 3, 1).reshape(batch, -1, channels) for x in levels], dim=1)


def focal_notebook(logits, onehot, gamma=GAMMA, alpha=ALPHA):
    """Sum of the sigmoid focal loss, as the notebook writes it: log of the sigmoid."""
    p = logits.sigmoid()
    pt = p * onehot + (1.0 - p) * (1.0 - onehot)
    w = alpha * onehot + (1.0 - alpha) * (1.0 - onehot)
    return (-w * torch.pow(1.0 - pt, gamma) * pt.log()).sum()


def focal_logsigmoid(logits, onehot, gamma=GAMMA, alpha=ALPHA):
    """The same sum with log(pt) from log-sigmoid: finite for every finite logit."""
    p = logits.sigmoid()
    pt = p * onehot + (1.0 - p) * (1.0 - onehot)
    log_pt = F.logsigmoid(logits) * onehot + F.logsigmoid(-logits) * (1.0 - onehot)
    w = alpha * onehot + (1.0 - alpha) * (1.0 - onehot)
    return (-w * torch.pow(1.0 - pt, gamma) * log_pt).sum()


def iou_loss(pred, tgt):
    """Sum of -log(max(iou, 1e-6)) over rows of ltrb boxes [n, 4]."""
    inner = (torch.min(pred[:, :2], tgt[:, :2]) + torch.min(pred[:, 2:], tgt[:, 2:])).clamp(min=0)
    inter = inner[:, 0] * inner[:, 1]
    area_p = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    area_t = (tgt[:, 0] + tgt[:, 2]) * (tgt[:, 1] + tgt[:, 3])
    iou = inter / (area_p + area_t - inter)
    return (-iou.clamp(min=1e-6).log()).sum()


def giou_loss(pred, tgt):
    """Sum of 1 - giou over rows of ltrb boxes [n, 4]; the enclosing box from max."""
    inner = (torch.min(pred[:, :2], tgt[:, :2]) + torch.min(pred[:, 2:], tgt[:, 2:])).clamp(min=0)
    inter = inner[:, 0] * inner[:, 1]
    area_p = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    area_t = (tgt[:, 0] + tgt[:, 2]) * (tgt[:, 1] + tgt[:, 3])
    union = area_p + area_t - inter
    outer = (torch.max(pred[:, :2], tgt[:, :2]) + torch.max(pred[:, 2:], tgt[:, 2:])).clamp(min=0)
    enclose = outer[:, 0] * outer[:, 1]
    giou = inter / union - (enclose - union) / enclose.clamp(min=1e-10)
    return (1.0 - giou).sum()


def num_positives(mask):
    """max(1, positives) per image, as float: the per-image divisor."""
    return mask.sum(dim=1).clamp(min=1).float()


def compute_cls_loss(cls_logits, cls_targets, mask, focal=focal_notebook):
    """Per-image focal loss [B] over every position and class, / num_pos."""
    logits = flatten_levels(cls_logits, cls_logits[0].shape[1])
    classes = torch.arange(1, logits.shape[-1] + 1, device=logits.device, dtype=cls_targets.dtype)
    out = []
    for b in range(logits.shape[0]):
        onehot = (classes[None, :] == cls_targets[b]).to(logits.dtype)  # [P, C]
        out.append(focal(logits[b], onehot).view(1))
    return torch.cat(out) / num_positives(mask).to(logits.dtype)


def compute_cnt_loss(cnt_logits, cnt_targets, mask):
    """Per-image centerness BCE [B] over the positives, / num_pos."""
    logits = flatten_levels(cnt_logits, 1)
    out = []
    for b in range(logits.shape[0]):
        m = mask[b]
        out.append(F.binary_cross_entropy_with_logits(
            logits[b][m], cnt_targets[b][m], reduction='sum').view(1))
    return torch.cat(out) / num_positives(mask).to(logits.dtype)


def compute_reg_loss(reg_preds, reg_targets, mask, mode='iou'):
    """Per-image box loss [B] over the positives ('iou' or 'giou'), / num_pos."""
    box = {'iou': iou_loss, 'giou': giou_loss}[mode]
    preds = flatten_levels(reg_preds, 4)
    out = [box(preds[b][mask[b]], reg_targets[b][mask[b]]).view(1) for b in range(preds.shape[0])]
    return torch.cat(out) / num_positives(mask).to(preds.dtype)


def notebook_losses(cls_logits, cnt_logits, reg_preds, cls_targets, cnt_targets, reg_targets,
                    mode='iou', focal=focal_notebook):
    """Per-image (cls, cnt, reg) losses, each [B]; the batch losses are their means.

    Heads are lists of per-level NCHW tensors; targets are [B, P, 1], [B, P, 1], [B, P, 4].
    Positives: cnt_targets > -1.
    """
    mask = (cnt_targets > -1).squeeze(-1)  # [B, P]
    return (compute_cls_loss(cls_logits, cls_targets, mask, focal),
            compute_cnt_loss(cnt_logits, cnt_targets, mask),
            compute_reg_loss(reg_preds, reg_targets, mask, mode))


def notebook_cells():
    """The notebook's own cells (contract §2.1): B 2, C 5, five 4x4 levels, all ones."""
    ones = lambda *s: torch.ones(s)  # noqa: E731
    mask = ones(2, 80).bool()
    return {
        'cls': compute_cls_loss([ones(2, 5, 4, 4)] * 5, ones(2, 80, 1), mask),
        'focal_sum': focal_notebook(ones(80, 5), (torch.arange(1, 6)[None, :] == ones(80, 1)).float()),
        'cnt': compute_cnt_loss([ones(2, 1, 4, 4)] * 5, ones(2, 80, 1), mask),
        'reg': compute_reg_loss([ones(2, 4, 4, 4)] * 5, ones(2, 80, 4), mask),
    }


if __name__ == '__main__':
    # Prints the notebook's cells: cls [2.1113, 2.1113], focal_sum 168.9016,
    # cnt [0.3133, 0.3133], reg [0, 0].
    for name, value in notebook_cells().items():
        print(f'{name:9s} {[round(v, 4) for v in value.reshape(-1).tolist()]}')
