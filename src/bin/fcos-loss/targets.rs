//! `fcos-loss targets FILE --out OUT`: assigns a case file's targets from its
//! `gt_boxes` / `gt_classes` on the GPU (the target pass, docs/contract.md §7),
//! writes them, and compares them with the file's own targets.

use std::path::PathBuf;

use serde_json::json;

use fcos_loss::casefile;
use fcos_loss::{FcosLoss, LossConfig, Targets};

use crate::common::{verdict, Failure};

/// Largest relative centerness error the contract allows (§7).
const CNT_TOL: f64 = 1e-6;

#[derive(clap::Args, Debug)]
pub struct TargetsArgs {
    /// A safetensors case file with gt_boxes [B, M, 4] and gt_classes [B, M].
    file: PathBuf,
    /// Where to write cls_targets [B, P, 1], cnt_targets [B, P, 1], reg_targets [B, P, 4].
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object on stdout instead of the text.
    #[arg(long)]
    json: bool,
}

/// How the assigned targets differ from the file's.
struct Differences {
    /// Positions whose class target differs.
    cls: usize,
    /// Positions whose box target differs in any coordinate (bits).
    reg: usize,
    /// Largest relative centerness error.
    cnt: f64,
}

pub fn run(a: &TargetsArgs) -> Result<(), Failure> {
    let case = casefile::read_case(&a.file)?;
    let b = &case.batch;
    let Some(boxes) = &case.boxes else {
        return Err(Failure::Error(fcos_loss::FcosError::File(format!(
            "{} has no gt_boxes / gt_classes to assign targets from",
            a.file.display()
        ))));
    };
    let gt = boxes.ground_truth(b.batch);
    let engine = FcosLoss::new(LossConfig::new(b.classes as u32))?;
    let t = engine.assign_targets(&b.levels, &gt)?;
    let (batch, p) = (b.batch, b.levels.positions());
    let targets = &t.value;
    casefile::write_tensors(
        &a.out,
        &[
            (
                "cls_targets".into(),
                vec![batch, p, 1],
                targets.cls_targets.clone(),
            ),
            (
                "cnt_targets".into(),
                vec![batch, p, 1],
                targets.cnt_targets.clone(),
            ),
            (
                "reg_targets".into(),
                vec![batch, p, 4],
                targets.reg_targets.clone(),
            ),
        ],
    )?;
    // Compared only where the file holds targets of its own.
    let d = case
        .targets_given
        .then(|| differences(targets, &b.cls_targets, &b.cnt_targets, &b.reg_targets));
    let ok = d
        .as_ref()
        .is_none_or(|d| d.cls == 0 && d.reg == 0 && d.cnt <= CNT_TOL);
    let positives = targets.cnt_targets.iter().filter(|&&c| c > -1.0).count();
    let kernel_ms = t.kernel.map(|k| k.as_secs_f64() * 1e3);
    if a.json {
        println!(
            "{}",
            json!({
                "adapter": engine.adapter_name(),
                "file": a.file.display().to_string(),
                "out": a.out.display().to_string(),
                "images": batch,
                "positions": p,
                "boxes_per_image": boxes.boxes_per_image,
                "positives": positives,
                "compared": d.is_some(),
                "differing_cls": d.as_ref().map(|d| d.cls),
                "differing_reg": d.as_ref().map(|d| d.reg),
                "max_cnt_rel_err": d.as_ref().map(|d| d.cnt),
                "kernel_ms": kernel_ms,
                "ok": ok,
            })
        );
    } else {
        println!("adapter: {}", engine.adapter_name());
        println!(
            "assigned {batch} x {p} positions from {} boxes per image on the GPU: {positives} positives",
            boxes.boxes_per_image
        );
        println!("wrote {}", a.out.display());
        match &d {
            Some(d) => println!(
                "against the file's targets: {} class targets differ, {} box targets differ, largest centerness error {:.2e} (tolerance {CNT_TOL:.0e}): {}",
                d.cls,
                d.reg,
                d.cnt,
                if ok { "ok" } else { "FAILED" }
            ),
            None => println!("the file holds no targets to compare with"),
        }
    }
    verdict(ok, a.json, "assigned targets differ from the file's")
}

fn differences(t: &Targets, cls: &[f32], cnt: &[f32], reg: &[f32]) -> Differences {
    let cls = t
        .cls_targets
        .iter()
        .zip(cls)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let reg = t
        .reg_targets
        .chunks_exact(4)
        .zip(reg.chunks_exact(4))
        .filter(|(a, b)| a.iter().zip(*b).any(|(x, y)| x.to_bits() != y.to_bits()))
        .count();
    let cnt = t
        .cnt_targets
        .iter()
        .zip(cnt)
        .map(|(&a, &b)| {
            let d = (f64::from(a) - f64::from(b)).abs();
            if d == 0.0 {
                0.0
            } else {
                d / f64::from(b.abs()).max(1e-30)
            }
        })
        .fold(0.0, f64::max);
    Differences { cls, reg, cnt }
}
