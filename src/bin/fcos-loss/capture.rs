//! `fcos-loss capture CASE --out DIR`: one call on a case file, described for
//! replay on another WebGPU implementation (`tests/browser/replay.mjs` replays it
//! in Chromium): `capture.json` (pipelines, buffers, commands, where the results
//! lie, the case's expected values and the tolerances), each pipeline's WebGPU
//! source under `shaders/`, each buffer's contents before the call under
//! `buffers/`, and the expected gradients under `expected/` (f32, little-endian).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use fcos_loss::casefile::{self, Case, CaseBoxes, Expected};
use fcos_loss::{
    check_values, reference, CallCapture, CapturedCommand, CapturedRange, FcosError, FcosLoss,
    GpuContext, Gradients, Head, LossConfig, LossWeights, RegLoss, ABS_TOL, REL_TOL,
    WORKGROUP_SIZE,
};

use crate::common::{case_for, gpu_capture, parse_reg, Failure, GRAD_TOL};

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// A safetensors case file with expected values (docs/contract.md §5).
    pub file: PathBuf,
    /// Folder to write the capture into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Capture the forward + backward call (gradients of cls + cnt + reg).
    #[arg(long)]
    backward: bool,
    /// Box regression loss.
    #[arg(long, default_value = "iou", value_parser = parse_reg)]
    reg: RegLoss,
    /// Assign the targets from the file's gt_boxes / gt_classes inside the call.
    #[arg(long)]
    from_boxes: bool,
    /// Reduce with the workgroup-memory tree, not subgroup operations (the
    /// default uses subgroups where the capturing device has them).
    #[arg(long)]
    no_subgroups: bool,
    /// Threads per workgroup (the `WG` override), a power of two.
    #[arg(long, default_value_t = WORKGROUP_SIZE)]
    workgroup_size: u32,
}

pub fn run(a: &CaptureArgs) -> Result<(), Failure> {
    let (case, boxes) = case_for(casefile::read_case(&a.file)?, a.from_boxes)?;
    let batch = &case.batch;
    let (levels, inputs) = (&batch.levels, batch.inputs());
    check_values(levels, &inputs, batch.classes)?;
    let expected = case.expected.as_ref().ok_or_else(|| {
        FcosError::File(format!(
            "{} has no expected values to compare a replay with",
            a.file.display()
        ))
    })?;
    let mut config = LossConfig::new(batch.classes as u32);
    config.reg_loss = a.reg;
    let weights = LossWeights::for_config(&config);
    let num_pos = reference::losses(&config, levels, &inputs)?.num_pos;
    let engine = engine(config, a)?;
    // Half heads are uploaded as the file stores them.
    let capture = gpu_capture(&engine, &case, boxes.as_ref(), a.backward, &weights)?;
    let want = Want::of(expected, a.reg, a.backward, num_pos)?;
    write(a, &case, boxes.as_ref(), &engine, &capture, &want)?;
    println!(
        "captured {} ({}, {}{}{}) on {}: {} pipelines, {} buffers, {} commands, in {}",
        a.file.display(),
        if a.backward { "backward" } else { "forward" },
        a.reg.name(),
        if a.from_boxes { ", from boxes" } else { "" },
        if engine.subgroups() {
            ", subgroups"
        } else {
            ""
        },
        capture.adapter,
        capture.pipelines.len(),
        capture.buffers.len(),
        capture.commands.len(),
        a.out.display()
    );
    Ok(())
}

/// An engine whose plan any WebGPU device accepts: the capturing context's
/// offset alignments raised to WebGPU's defaults (256 bytes) and its largest
/// storage binding cut to WebGPU's default (128 MiB).
fn engine(config: LossConfig, a: &CaptureArgs) -> Result<FcosLoss, FcosError> {
    let mut ctx = GpuContext::open()?;
    let l = &mut ctx.limits;
    l.min_uniform_buffer_offset_alignment = l.min_uniform_buffer_offset_alignment.max(256);
    l.min_storage_buffer_offset_alignment = l.min_storage_buffer_offset_alignment.max(256);
    l.max_storage_buffer_binding_size = l.max_storage_buffer_binding_size.min(128 << 20);
    let mut engine = FcosLoss::with_context(ctx, config)?;
    engine.set_workgroup_size(a.workgroup_size)?;
    if a.no_subgroups {
        engine.set_subgroups(false)?;
    }
    Ok(engine)
}

/// What a replay must give: the case's per-image losses of this box loss, the
/// reference's positives and, backward, the expected gradients.
struct Want<'e> {
    cls: &'e [f64],
    cnt: &'e [f64],
    reg: &'e [f64],
    num_pos: Vec<u32>,
    grads: Option<[&'e Vec<Vec<f32>>; 3]>,
}

impl<'e> Want<'e> {
    fn of(
        e: &'e Expected,
        reg: RegLoss,
        backward: bool,
        num_pos: Vec<u32>,
    ) -> Result<Self, FcosError> {
        let missing = |what: &str| FcosError::File(format!("the case file has no {what}"));
        let reg_loss = match reg {
            RegLoss::Iou => &e.reg_loss,
            RegLoss::Giou => e
                .reg_loss_giou
                .as_ref()
                .ok_or_else(|| missing("expected.reg_loss_giou"))?,
        };
        let grads = if backward {
            let g: &Gradients = e.grad.as_ref().ok_or_else(|| missing("expected.grad.*"))?;
            let reg_grad = match reg {
                RegLoss::Iou => &g[Head::RegPreds],
                RegLoss::Giou => e
                    .grad_giou_reg
                    .as_ref()
                    .ok_or_else(|| missing("expected.grad_giou.reg_preds.*"))?,
            };
            Some([&g[Head::ClsLogits], &g[Head::CntLogits], reg_grad])
        } else {
            None
        };
        Ok(Want {
            cls: &e.cls_loss,
            cnt: &e.cnt_loss,
            reg: reg_loss,
            num_pos,
            grads,
        })
    }
}

/// Writes `capture.json`, `shaders/`, `buffers/` and `expected/` under `a.out`.
fn write(
    a: &CaptureArgs,
    case: &Case,
    boxes: Option<&CaseBoxes>,
    engine: &FcosLoss,
    c: &CallCapture,
    want: &Want,
) -> Result<(), FcosError> {
    let out = &a.out;
    for sub in ["shaders", "buffers", "expected", "native"] {
        create_dir(&out.join(sub))?;
    }
    let pipelines: Vec<Value> = c
        .pipelines
        .iter()
        .map(|v| {
            let file = format!("shaders/{}.wgsl", v.stem);
            write_file(&out.join(&file), v.webgpu_source().as_bytes())?;
            let constants: Map<String, Value> = v
                .constants
                .iter()
                .map(|(k, x)| (k.clone(), json!(x)))
                .collect();
            Ok(json!({
                "stem": v.stem,
                "file": file,
                "entry_point": v.entry_point,
                "constants": constants,
                "features": v.features,
                "bindings": v.bindings,
            }))
        })
        .collect::<Result<_, FcosError>>()?;
    let buffers: Vec<Value> = c
        .buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let file = format!("buffers/{i}.bin");
            write_file(&out.join(&file), &b.contents)?;
            Ok(json!({
                "label": b.label,
                "size": b.size,
                "usage": if b.uniform { "uniform" } else { "storage" },
                "file": file,
            }))
        })
        .collect::<Result<_, FcosError>>()?;
    let commands: Vec<Value> = c.commands.iter().map(command_json).collect();
    let mut gradients = Map::new();
    if let (Some(got), Some(wanted)) = (&c.gradients, &want.grads) {
        for (h, w) in Head::ALL.iter().zip(wanted) {
            let file = format!("expected/{h}.bin");
            let flat: Vec<f32> = w.iter().flatten().copied().collect();
            write_file(&out.join(&file), bytemuck::cast_slice(&flat))?;
            let mut r = range_json(out, &format!("native/{h}.bin"), &got[*h])?;
            r["expected_file"] = json!(file);
            gradients.insert(h.to_string(), r);
        }
    }
    let batch = &case.batch;
    let doc = json!({
        "format": "fcos-loss capture 1",
        "crate": env!("CARGO_PKG_VERSION"),
        "case": a.file.display().to_string(),
        "pass": if a.backward { "backward" } else { "forward" },
        "reg": a.reg.name(),
        "from_boxes": boxes.is_some(),
        "subgroups": engine.subgroups(),
        "workgroup_size": engine.workgroup_size(),
        "adapter": c.adapter,
        "batch": batch.batch,
        "classes": batch.classes,
        "levels": batch.levels.shapes(),
        "pipelines": pipelines,
        "buffers": buffers,
        "params_buffer": c.params,
        "commands": commands,
        "results": {
            "image_sums": range_json(out, "native/image_sums.bin", &c.image_sums)?,
            // One record per image: 8 words.
            "image_sums_stride": 32,
            "image_sums_fields": {
                "cls": [0, "f32"], "cnt": [4, "f32"], "reg": [8, "f32"], "reg_w": [12, "f32"],
                "ctr": [16, "f32"], "num_pos": [20, "u32"], "flags": [24, "u32"],
            },
            "normalization": "per-image",
            "gradients": gradients,
        },
        "expected": {
            "cls": want.cls,
            "cnt": want.cnt,
            "reg": want.reg,
            "num_pos": want.num_pos,
        },
        "tolerance": {"loss_rel": REL_TOL, "loss_abs": ABS_TOL, "grad": GRAD_TOL},
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| FcosError::File(e.to_string()))?;
    write_file(&out.join("capture.json"), text.as_bytes())
}

fn command_json(c: &CapturedCommand) -> Value {
    match c {
        CapturedCommand::Clear { buffer } => json!({"clear": buffer}),
        CapturedCommand::Dispatch {
            pipeline,
            bindings,
            workgroups,
        } => json!({
            "pipeline": pipeline,
            "bindings": bindings.iter().map(|b| json!({
                "binding": b.binding, "buffer": b.buffer, "offset": b.offset, "size": b.size,
            })).collect::<Vec<_>>(),
            "workgroups": workgroups,
        }),
    }
}

/// A result range, with what the capturing device left there written to
/// `native` (under `out`).
fn range_json(out: &Path, native: &str, r: &CapturedRange) -> Result<Value, FcosError> {
    write_file(&out.join(native), &r.native)?;
    Ok(json!({"buffer": r.buffer, "offset": r.offset, "size": r.size, "native_file": native}))
}

fn create_dir(path: &Path) -> Result<(), FcosError> {
    std::fs::create_dir_all(path).map_err(|e| FcosError::File(format!("{}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FcosError> {
    std::fs::write(path, bytes).map_err(|e| FcosError::File(format!("{}: {e}", path.display())))
}
