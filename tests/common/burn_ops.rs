//! The FCOS loss in plain burn tensor ops (docs/contract.md §2: sigmoid focal loss
//! α = 0.25, γ = 2 over every position and class, centerness BCE and IoU/GIoU at
//! positives, each normalised by the image's positives, then batch means), for
//! tests/burn_parity.rs and examples/burn_fcos.rs. Differentiated by burn's autodiff.

use burn::tensor::{activation, Device, Tensor, TensorData};
use fcos_loss::{Batch, Head, Heads, RegLoss};

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn softplus<const D: usize>(u: Tensor<D>) -> Tensor<D> {
    // max(u, 0) + log(1 + exp(−|u|))
    u.clone().clamp_min(0.0) + u.abs().neg().exp().add_scalar(1.0).log()
}

/// The notebook's loss in plain burn tensor ops (docs/contract.md §2, per-image
/// normalisation, batch means): the objective `cls + cnt + reg`.
pub fn objective(
    heads: &Heads<Vec<Tensor<4>>>,
    batch: &Batch,
    mode: RegLoss,
    device: &Device,
) -> Tensor<1> {
    let (b, c, p) = (batch.batch, batch.classes, batch.levels.positions());
    // [B, P, ch]: each level NHWC-flattened, levels concatenated (contract §1.1).
    let flat = |h: Head| -> Tensor<3> {
        let ch = h.channels(c);
        let parts = heads[h]
            .iter()
            .map(|t| {
                let [_, _, hl, wl] = t.dims();
                t.clone().permute([0, 2, 3, 1]).reshape([b, hl * wl, ch])
            })
            .collect();
        Tensor::cat(parts, 1)
    };
    let (cls, cnt, reg) = (
        flat(Head::ClsLogits),
        flat(Head::CntLogits),
        flat(Head::RegPreds),
    );

    // Host constants from the targets: one-hot classes, positive mask, 1/num_pos.
    let mut onehot = vec![0f32; b * p * c];
    let mut pos = vec![0f32; b * p];
    let mut inv_n = vec![0f32; b];
    let mut safe_reg = vec![1f32; b * p * 4];
    for (i, inv) in inv_n.iter_mut().enumerate() {
        let mut n = 0usize;
        for q in 0..p {
            let k = i * p + q;
            let t = batch.cls_targets[k];
            for cc in 0..c {
                if t == (cc + 1) as f32 {
                    onehot[k * c + cc] = 1.0;
                }
            }
            if batch.cnt_targets[k] > -1.0 {
                pos[k] = 1.0;
                n += 1;
                safe_reg[k * 4..k * 4 + 4].copy_from_slice(&batch.reg_targets[k * 4..k * 4 + 4]);
            }
        }
        *inv = 1.0 / n.max(1) as f32;
    }
    let onehot = tensor(&onehot, [b, p, c], device);
    let pos = tensor(&pos, [b, p], device);
    let inv_n = tensor(&inv_n, [b], device);

    // Focal loss over every position and class, α = 0.25, γ = 2.
    let (alpha, t) = (0.25f32, onehot);
    let not_t = t.clone().neg().add_scalar(1.0);
    let log_p = softplus(cls.clone().neg()).neg(); // log σ(z)
    let log_q = softplus(cls.clone()).neg(); // log(1 − σ(z))
    let sig = activation::sigmoid(cls);
    let pt = t.clone() * sig.clone() + not_t.clone() * sig.neg().add_scalar(1.0);
    let log_pt = t.clone() * log_p + not_t.clone() * log_q;
    let w = t.mul_scalar(alpha) + not_t.mul_scalar(1.0 - alpha);
    let one_minus = pt.neg().add_scalar(1.0);
    let fl = (w * one_minus.clone() * one_minus * log_pt).neg();
    let cls_b = fl.sum_dim(2).sum_dim(1).reshape([b]) * inv_n.clone();

    // Centerness BCE with logits at positives.
    let x = cnt.reshape([b, p]);
    let y = tensor(&batch.cnt_targets, [b, p], device);
    let bce = x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().add_scalar(1.0).log();
    let cnt_b = (bce * pos.clone()).sum_dim(1).reshape([b]) * inv_n.clone();

    // IoU / GIoU at positives (negatives' targets replaced by 1s, then masked).
    let g = tensor(&safe_reg, [b, p, 4], device);
    let ch = |t: &Tensor<3>, k: usize| t.clone().narrow(2, k, 1).reshape([b, p]);
    let (pl, pt_, pr, pb) = (ch(&reg, 0), ch(&reg, 1), ch(&reg, 2), ch(&reg, 3));
    let (gl, gt, gr, gb) = (ch(&g, 0), ch(&g, 1), ch(&g, 2), ch(&g, 3));
    let iw = (pl.clone().min_pair(gl.clone()) + pr.clone().min_pair(gr.clone())).clamp_min(0.0);
    let ih = (pt_.clone().min_pair(gt.clone()) + pb.clone().min_pair(gb.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let a_p = (pl.clone() + pr.clone()) * (pt_.clone() + pb.clone());
    let a_g = (gl.clone() + gr.clone()) * (gt.clone() + gb.clone());
    let union = a_p + a_g - inter.clone();
    let iou = inter / union.clone();
    let loss = match mode {
        RegLoss::Iou => iou.clamp_min(1e-6).log().neg(),
        RegLoss::Giou => {
            let ew = (pl.max_pair(gl) + pr.max_pair(gr)).clamp_min(0.0);
            let eh = (pt_.max_pair(gt) + pb.max_pair(gb)).clamp_min(0.0);
            let enclose = ew * eh;
            let giou = iou - (enclose.clone() - union) / enclose.clamp_min(1e-10);
            giou.neg().add_scalar(1.0)
        }
    };
    let reg_b = (loss * pos).sum_dim(1).reshape([b]) * inv_n;

    (cls_b + cnt_b + reg_b).sum().div_scalar(b as f32)
}
