//! A small FCOS head trained in burn with the fused loss (feature `burn`):
//! `cargo run --release --features burn --example burn_fcos [STEPS]` (default 60).
//!
//! The head is a burn module of four 3×3 convolutions (a shared trunk, then class,
//! centerness and box branches, boxes through `exp`) run over a fixed synthetic
//! 3-level feature pyramid (strides 8, 16, 32 of a 128×128 image, random features),
//! from synthetic ground-truth boxes: burn's Adam updates it from the gradients of the
//! fused loss from boxes ([`BurnFcos::loss_from_boxes`]), which assigns each
//! position's targets on the GPU inside the loss pass (docs/contract.md §7).
//!
//! In the same sitting, each step also runs the same loss in plain burn tensor ops
//! (tests/common/burn_ops.rs) on targets assigned once from the same boxes by the
//! engine's target pass (`FcosLoss::assign_targets`):
//!
//! - forward only, on the very heads the fused loss saw: the two objectives must
//!   agree to 1e-3 (relative), or the example exits with code 1;
//! - forward and backward on a second forward of the head (a separate copy of the
//!   heads, its gradients thrown away), timed beside the fused loss and backward.
//!
//! Both timings start after the head's forward has finished and stop after a device
//! sync, so each is the loss, its backward and the backward through the convolutions.
//! At the end the example prints the median of each and their ratio, and exits with
//! code 1 unless the last objective is below the first.

#[path = "../tests/common/burn_ops.rs"]
mod burn_ops;

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use fcos_loss::burn::{BurnBoxes, BurnFcos};
use fcos_loss::synthetic::{generate, RandomBoxes, SyntheticSpec};
use fcos_loss::{GroundTruth, GtClasses, Heads, Levels, LossConfig, RegLoss};

/// Channels of the synthetic features and of the trunk.
const FEATURES: usize = 8;
/// Object classes.
const CLASSES: usize = 4;
/// Images per batch.
const BATCH: usize = 2;
/// The pyramid's strides over an `IMAGE × IMAGE` image.
const STRIDES: [u32; 3] = [8, 16, 32];
/// The image's side in pixels.
const IMAGE: u32 = 128;
/// Ground-truth rows per image (some of them padding).
const BOXES: usize = 8;
/// Adam's learning rate.
const LR: f64 = 1e-2;
/// Steps left out of the medians (shader compilation, first allocations).
const WARMUP: usize = 2;
/// The largest relative difference allowed between the fused and the plain objective.
const AGREEMENT: f64 = 1e-3;

/// The FCOS head: a shared 3×3 trunk, then a 3×3 convolution per output.
#[derive(Module, Debug)]
struct FcosHead {
    trunk: Conv2d,
    cls: Conv2d,
    cnt: Conv2d,
    reg: Conv2d,
}

impl FcosHead {
    fn new(device: &Device) -> Self {
        let conv = |out: usize| {
            Conv2dConfig::new([FEATURES, out], [3, 3]).with_padding(PaddingConfig2d::Same)
        };
        // The branches as in FCOS: weights N(0, 0.01), the class bias at the prior
        // logit(0.01) ≈ -4.6, the box bias at log(32 px) (boxes are `exp` of it).
        let branch = |out: usize, bias: f32| {
            let mut c = conv(out)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device);
            c.bias = Some(Param::from_tensor(Tensor::full([out], bias, device)));
            c
        };
        FcosHead {
            trunk: conv(FEATURES).init(device),
            cls: branch(CLASSES, -4.6),
            cnt: branch(1, 0.0),
            reg: branch(4, 32f32.ln()),
        }
    }

    /// The heads per level: class `[B, C, H, W]`, centerness `[B, 1, H, W]`, boxes
    /// `[B, 4, H, W]` (positive).
    fn forward(&self, features: &[Tensor<4>]) -> Heads<Vec<Tensor<4>>> {
        let mut out = Heads::from_fn(|_| Vec::with_capacity(features.len()));
        for f in features {
            let trunk = relu(self.trunk.forward(f.clone()));
            out.cls_logits.push(self.cls.forward(trunk.clone()));
            out.cnt_logits.push(self.cnt.forward(trunk.clone()));
            out.reg_preds.push(self.reg.forward(trunk).exp());
        }
        out
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2].as_secs_f64() * 1e3,
        n => (v[n / 2 - 1] + v[n / 2]).as_secs_f64() * 0.5e3,
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let steps: usize = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .map_err(|e| format!("STEPS must be a count of steps, got {s:?}: {e}"))?,
        None => 60,
    };
    let mut config = LossConfig {
        strides: STRIDES.to_vec(),
        ..LossConfig::new(CLASSES as u32)
    }
    .with_reg_loss(RegLoss::Giou);
    // The notebook's first three level ranges, the last one open.
    config.assignment.ranges = vec![[-1.0, 64.0], [64.0, 128.0], [128.0, 999_999.0]];
    let (device, fcos) = BurnFcos::open(config)?;
    println!(
        "burn device {device:?}, engine on {}",
        fcos.engine().adapter_name()
    );
    let ad = device.clone().autodiff();
    ad.seed(0);

    // Synthetic ground-truth boxes (as the peer script `gen_targets.random_boxes`
    // draws them, padding rows included), held fixed as burn tensors: the fused loss
    // assigns them to the positions itself, every step.
    let levels = Levels::from_image(IMAGE, IMAGE, &STRIDES)?;
    let drawn = RandomBoxes::draw(BATCH, BOXES, IMAGE, IMAGE, CLASSES as u32, 7);
    let (b, p) = (BATCH, levels.positions());
    let classes: Vec<i32> = drawn.classes.iter().map(|&c| c as i32).collect();
    let boxes = BurnBoxes {
        boxes: Tensor::from_data(TensorData::new(drawn.boxes.clone(), [b, BOXES, 4]), &ad),
        classes: Tensor::<2, Int>::from_data(TensorData::new(classes.clone(), [b, BOXES]), &ad),
    };
    // The plain-ops loss reads dense targets from a `Batch` (its heads are unused):
    // the engine's target pass assigns them once from the same boxes.
    let gt = GroundTruth {
        batch: BATCH,
        boxes_per_image: BOXES,
        boxes: &drawn.boxes,
        classes: GtClasses::I32(&classes),
    };
    let assigned = fcos.engine().assign_targets(&levels, &gt)?.value;
    let mut batch = generate(&levels, &STRIDES, &SyntheticSpec::new(BATCH, CLASSES))?;
    batch.cls_targets = assigned.cls_targets;
    batch.cnt_targets = assigned.cnt_targets;
    batch.reg_targets = assigned.reg_targets;
    let features: Vec<Tensor<4>> = levels
        .shapes()
        .iter()
        .map(|&(h, w)| {
            let shape = [b, FEATURES, h as usize, w as usize];
            Tensor::random(shape, Distribution::Normal(0.0, 1.0), &ad)
        })
        .collect();
    println!(
        "{} levels {:?}, {p} positions, B = {b}, C = {CLASSES}, {BOXES} box rows per image, \
         {} positives; Adam lr {LR}, {steps} steps",
        levels.len(),
        levels.shapes(),
        batch.cnt_targets.iter().filter(|&&c| c > -1.0).count()
    );

    let mut model = FcosHead::new(&ad);
    let mut optim = AdamConfig::new().init();
    let (mut first, mut last) = (None, f32::NAN);
    let (mut fused_times, mut plain_times) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let heads = model.forward(&features);
        // A separate copy of the heads for the plain-ops timing (not used for the update).
        let plain_heads = model.forward(&features);
        ad.sync()?;

        let t = Instant::now();
        let out = fcos.loss_from_boxes(heads.clone(), boxes.clone())?;
        let grads = out.objective.backward();
        ad.sync()?;
        let fused_time = t.elapsed();

        let t = Instant::now();
        let plain = burn_ops::objective(&plain_heads, &batch, RegLoss::Giou, &ad);
        let plain_grads = plain.backward();
        ad.sync()?;
        let plain_time = t.elapsed();
        drop((plain, plain_grads, plain_heads));

        // Agreement: the plain-ops objective of the same heads, forward only.
        let objective: f32 = out.objective.clone().try_into_scalar()?;
        let same = heads.map(|_, v| v.into_iter().map(Tensor::detach).collect());
        let plain_value: f32 =
            burn_ops::objective(&same, &batch, RegLoss::Giou, &ad).try_into_scalar()?;
        let diff = f64::from((objective - plain_value).abs());
        let scale = f64::from(objective.abs().max(plain_value.abs()));
        let agree = diff <= AGREEMENT * scale;
        if !agree {
            return Err(format!(
                "step {step}: the fused objective {objective} and the plain-ops objective \
                 {plain_value} differ by {diff:.3e}, more than {AGREEMENT} relative"
            )
            .into());
        }

        if step % 10 == 0 || step + 1 == steps {
            let l = out.read()?;
            println!(
                "step {step:3}  fused {objective:.5} (cls {:.4} cnt {:.4} reg {:.4}) {:7.2} ms  \
                 plain ops {plain_value:.5} {:7.2} ms",
                l.cls_loss,
                l.cnt_loss,
                l.reg_loss,
                fused_time.as_secs_f64() * 1e3,
                plain_time.as_secs_f64() * 1e3,
            );
        }
        // The loss holds the heads while the engine's checks are on (to name a bad
        // value in `read`): let it go before the update.
        drop(out);
        first.get_or_insert(objective);
        last = objective;
        if step >= WARMUP || steps <= WARMUP {
            fused_times.push(fused_time);
            plain_times.push(plain_time);
        }

        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(LR, model, grads);
    }

    let Some(first) = first else {
        return Err("no steps run (STEPS = 0)".into());
    };
    let timed = fused_times.len();
    let (fused, plain) = (median(fused_times), median(plain_times));
    println!(
        "objective {first:.5} -> {last:.5} over {steps} steps; median of {timed} steps, \
         loss + backward: fused {fused:.2} ms, plain ops {plain:.2} ms ({:.2}x)",
        plain / fused
    );
    if last.partial_cmp(&first) != Some(std::cmp::Ordering::Less) {
        return Err(format!("the loss did not fall: {first} -> {last}").into());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn_fcos: {e}");
            ExitCode::FAILURE
        }
    }
}
