//! Reading a case file: the bytes (with a check of the header's offsets), the
//! inputs of docs/contract.md §5 with every shape checked against §1, and the
//! optional `expected.*` results.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::decode::{decode, decode_f32};
use super::format::{fmt_shape, one_line, shape_rank};
use super::{
    Case, CaseBoxes, Expected, ExpectedObjective, ExpectedSums, HalfHeads, GRAD, GRAD_GIOU_REG,
    GRAD_GLOBAL_CTR, LOSSES, OBJECTIVE, REG_LOSS_GIOU, SUMS,
};
use crate::{Batch, FcosError, Gradients, Head, Input, Levels, Targets};

/// Reads a case file (docs/contract.md §5 tensor names) and checks its shapes.
///
/// A path that cannot be read (missing, a directory, no permission) or whose
/// content is not valid safetensors gives [`FcosError::File`] naming the path;
/// a missing tensor, a wrong shape or an unusable dtype gives an error naming
/// the tensor.
pub fn read_case(path: &Path) -> Result<Case, FcosError> {
    let src = format!("'{}'", path.display());
    if path.is_dir() {
        return Err(FcosError::File(format!(
            "cannot read case file {src}: it is a directory, not a safetensors file"
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| FcosError::File(one_line(format!("cannot read case file {src}: {e}"))))?;
    parse(&bytes, &src)
}

/// Parses a case from the bytes of a safetensors file, with the checks of
/// [`read_case`].
pub fn parse_case(bytes: &[u8]) -> Result<Case, FcosError> {
    parse(bytes, "the input bytes")
}

fn parse(bytes: &[u8], src: &str) -> Result<Case, FcosError> {
    precheck_offsets(bytes, src)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        FcosError::File(one_line(format!(
            "{src} is not a valid safetensors file: {e}"
        )))
    })?;
    let names: HashSet<String> = st.names().into_iter().map(str::to_string).collect();
    let r = Reader { st, names, src };
    r.case()
}

/// Rejects headers whose data offsets point past the end of the buffer before
/// `safetensors` sums them (its arithmetic is unchecked there).
fn precheck_offsets(bytes: &[u8], src: &str) -> Result<(), FcosError> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(FcosError::File(format!(
            "{src} is not a valid safetensors file: {} bytes, too short for the 8-byte header length",
            bytes.len()
        )));
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(arr);
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
    else {
        return Err(FcosError::File(format!(
            "{src} is not a valid safetensors file: header length {n} exceeds the {} bytes present (truncated or not safetensors)",
            bytes.len()
        )));
    };
    let data_len = (bytes.len() - header.len() - 8) as u64;
    // Anything that does not parse here is left to `safetensors` to report.
    let Ok(map) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(header) else {
        return Ok(());
    };
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64);
        if let Some(end) = end {
            if end > data_len {
                return Err(FcosError::File(one_line(format!(
                    "{src} is not a valid safetensors file: tensor '{name}' ends at byte {end} of a {data_len}-byte data section (truncated?)"
                ))));
            }
        }
    }
    Ok(())
}

/// A parsed safetensors buffer plus the label (path) used in messages.
struct Reader<'a> {
    st: SafeTensors<'a>,
    names: HashSet<String>,
    src: &'a str,
}

/// The class logits of every level and what they fix: `B`, `C`, the level shapes.
struct ClsLogits {
    levels: Vec<Vec<f32>>,
    shapes: Vec<(u32, u32)>,
    batch: usize,
    classes: usize,
}

impl<'a> Reader<'a> {
    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.names.iter().any(|n| n.starts_with(prefix))
    }

    fn missing(&self, name: &str, expected: &str) -> FcosError {
        FcosError::File(format!(
            "tensor '{name}' is missing from {} (expected shape {expected})",
            self.src
        ))
    }

    /// The view of `name`, or an error naming it with the shape it should have.
    fn get(&self, name: &str, expected: &str) -> Result<TensorView<'a>, FcosError> {
        if !self.has(name) {
            return Err(self.missing(name, expected));
        }
        self.st
            .tensor(name)
            .map_err(|e| FcosError::File(one_line(format!("tensor '{name}' in {}: {e}", self.src))))
    }

    /// The case: the class logits fix `B`, `C` and the levels; the other heads,
    /// the targets and the expected values are read against them, in
    /// [`Input::ALL`] order.
    fn case(&self) -> Result<Case, FcosError> {
        let cls = self.read_cls_logits()?;
        let (b, c) = (cls.batch, cls.classes);
        let levels = levels_with_positions(&cls.shapes)?;
        let p = levels.positions();
        let shapes = cls.shapes;
        let cnt_logits = self.read_levels(Head::CntLogits, b, c, &shapes)?;
        let reg_preds = self.read_levels(Head::RegPreds, b, c, &shapes)?;
        let boxes = self.read_boxes(b)?;
        // A file with boxes may leave the targets out (they come from the boxes).
        let targets_given = boxes.is_none()
            || [Input::ClsTargets, Input::CntTargets, Input::RegTargets]
                .iter()
                .any(|i| self.has(i.name()));
        let targets = if targets_given {
            Targets {
                cls_targets: self.read_target(Input::ClsTargets, b, p)?,
                cnt_targets: self.read_target(Input::CntTargets, b, p)?,
                reg_targets: self.read_target(Input::RegTargets, b, p)?,
            }
        } else {
            Targets::background(b, p)
        };
        let batch = Batch {
            levels,
            batch: b,
            classes: c,
            cls_logits: cls.levels,
            cnt_logits,
            reg_preds,
            cls_targets: targets.cls_targets,
            cnt_targets: targets.cnt_targets,
            reg_targets: targets.reg_targets,
        };
        let expected = self.expected(&batch, &shapes)?;
        Ok(Case {
            batch,
            targets_given,
            boxes,
            expected,
            half: self.half_heads(shapes.len()),
        })
    }

    /// The heads' bits when every head level is `F16`, or every one `BF16`
    /// (their shapes were checked already).
    fn half_heads(&self, num_levels: usize) -> Option<HalfHeads> {
        let view = |h: Head, l: usize| self.st.tensor(&format!("{h}.{l}")).ok();
        let dtype = match view(Head::ClsLogits, 0)?.dtype() {
            Dtype::F16 => crate::Dtype::F16,
            Dtype::BF16 => crate::Dtype::Bf16,
            _ => return None,
        };
        let first = view(Head::ClsLogits, 0)?.dtype();
        let bits = crate::Heads::try_from_fn(|h| {
            (0..num_levels)
                .map(|l| {
                    let v = view(h, l).filter(|v| v.dtype() == first).ok_or(())?;
                    Ok(v.data()
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect())
                })
                .collect::<Result<Vec<Vec<u16>>, ()>>()
        })
        .ok()?;
        Some(HalfHeads { dtype, bits })
    }

    /// `gt_boxes [B, M, 4]` and `gt_classes [B, M]` when the file has either
    /// (then both are required).
    fn read_boxes(&self, b: usize) -> Result<Option<CaseBoxes>, FcosError> {
        if !self.has("gt_boxes") && !self.has("gt_classes") {
            return Ok(None);
        }
        let view = self.get("gt_boxes", &format!("[{b}, M, 4]"))?;
        let s = view.shape().to_vec();
        if s.len() != 3 || s[0] != b || s[2] != 4 {
            return Err(FcosError::shape(
                "gt_boxes",
                format!("[{b}, M, 4]"),
                fmt_shape(&s),
            ));
        }
        let m = s[1];
        let boxes = decode_f32("gt_boxes", &view, false)?;
        let view = self.get("gt_classes", &format!("[{b}, {m}]"))?;
        if view.shape() != [b, m] {
            return Err(FcosError::shape(
                "gt_classes",
                format!("[{b}, {m}]"),
                fmt_shape(view.shape()),
            ));
        }
        let classes = decode("gt_classes", &view, true, |v| v)?;
        Ok(Some(CaseBoxes {
            boxes_per_image: m,
            boxes,
            classes,
        }))
    }

    /// `L`: the consecutive `cls_logits.{l}` from 0; every other level name must
    /// be one of them.
    fn count_levels(&self) -> Result<usize, FcosError> {
        let mut num_levels = 0usize;
        while self.has(&format!("{}.{num_levels}", Head::ClsLogits)) {
            num_levels += 1;
        }
        if num_levels == 0 {
            return Err(self.missing("cls_logits.0", "[B, C, H_0, W_0]"));
        }
        self.check_level_names(num_levels)?;
        Ok(num_levels)
    }

    /// `cls_logits.{l}` for every level: rank 4, `B, C >= 1` from level 0 and the
    /// same in every level, `H, W` within `u32`.
    fn read_cls_logits(&self) -> Result<ClsLogits, FcosError> {
        let num_levels = self.count_levels()?;
        let mut levels = Vec::with_capacity(num_levels);
        let mut shapes: Vec<(u32, u32)> = Vec::with_capacity(num_levels);
        let mut bc: Option<(usize, usize)> = None;
        for l in 0..num_levels {
            let name = format!("{}.{l}", Head::ClsLogits);
            let view = self.get(&name, "[B, C, H, W]")?;
            let (b, c, h, w) = cls_level_shape(&name, view.shape(), bc)?;
            bc = Some((b, c));
            shapes.push((h, w));
            levels.push(decode_f32(&name, &view, false)?);
        }
        let Some((batch, classes)) = bc else {
            return Err(self.missing("cls_logits.0", "[B, C, H_0, W_0]"));
        };
        Ok(ClsLogits {
            levels,
            shapes,
            batch,
            classes,
        })
    }

    /// Every `{head}.{n}` name (inputs and gradients) must be one of the `L` levels.
    fn check_level_names(&self, num_levels: usize) -> Result<(), FcosError> {
        let prefixes = Head::ALL
            .iter()
            .map(|h| h.name().to_string())
            .chain(Head::ALL.iter().map(|h| format!("{GRAD}.{h}")))
            .chain(Head::ALL.iter().map(|h| format!("{GRAD_GLOBAL_CTR}.{h}")))
            .chain([GRAD_GIOU_REG.to_string()]);
        let mut bad: Vec<&String> = Vec::new();
        for prefix in prefixes {
            let prefix = prefix.as_str();
            for name in &self.names {
                let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
                    continue;
                };
                let ok = rest
                    .parse::<usize>()
                    .is_ok_and(|l| l < num_levels && name == &format!("{prefix}.{l}"));
                if !ok {
                    bad.push(name);
                }
            }
        }
        bad.sort();
        if let Some(name) = bad.first() {
            return Err(FcosError::File(one_line(format!(
                "tensor '{name}' in {} is not one of the {num_levels} levels: levels are numbered by the consecutive names cls_logits.0 to cls_logits.{} (is a level missing or misnamed?)",
                self.src,
                num_levels - 1
            ))));
        }
        Ok(())
    }

    /// `{head}.{l}` for every level, each `[B, ch, H_l, W_l]`.
    fn read_levels(
        &self,
        head: Head,
        b: usize,
        c: usize,
        shapes: &[(u32, u32)],
    ) -> Result<Vec<Vec<f32>>, FcosError> {
        let ch = head.channels(c);
        shapes
            .iter()
            .enumerate()
            .map(|(l, &(h, w))| {
                let want = [b, ch, h as usize, w as usize];
                self.read_exact(&format!("{head}.{l}"), &want, "")
            })
            .collect()
    }

    /// A float tensor of exactly shape `want`; `note` is appended to the expected shape.
    fn read_exact(&self, name: &str, want: &[usize], note: &str) -> Result<Vec<f32>, FcosError> {
        let expected = format!("{}{note}", fmt_shape(want));
        let view = self.get(name, &expected)?;
        if view.shape() != want {
            return Err(FcosError::shape(name, expected, fmt_shape(view.shape())));
        }
        decode_f32(name, &view, false)
    }

    /// A flattened target: `[B, P, 1]` or `[B, P]` for one channel (integer
    /// dtypes allowed for the class indices), exactly `[B, P, 4]` for boxes.
    fn read_target(&self, input: Input, b: usize, p: usize) -> Result<Vec<f32>, FcosError> {
        let name = input.name();
        let ch = input.channels(1);
        if ch != 1 {
            return self.read_exact(name, &[b, p, ch], "");
        }
        let want = format!("{} (or [{b}, {p}])", fmt_shape(&[b, p, 1]));
        let view = self.get(name, &want)?;
        let s = view.shape();
        if s != [b, p, 1] && s != [b, p] {
            return Err(FcosError::shape(name, want, fmt_shape(s)));
        }
        decode_f32(name, &view, input == Input::ClsTargets)
    }

    /// The `expected.*` values, when the file has any: the losses (required),
    /// the GIoU loss, the IoU gradients and the GIoU box gradient (each optional).
    fn expected(
        &self,
        batch: &Batch,
        shapes: &[(u32, u32)],
    ) -> Result<Option<Expected>, FcosError> {
        if !self.has_prefix("expected.") {
            return Ok(None);
        }
        let b = batch.batch;
        let [cls, cnt, reg] = LOSSES;
        let cls_loss = self.read_loss(cls, b)?;
        let cnt_loss = self.read_loss(cnt, b)?;
        let reg_loss = self.read_loss(reg, b)?;
        let reg_loss_giou = if self.has(REG_LOSS_GIOU) {
            Some(self.read_loss(REG_LOSS_GIOU, b)?)
        } else {
            None
        };
        let grad = if self.has_prefix(&format!("{GRAD}.")) {
            Some(Gradients::try_from_fn(|h| {
                self.read_grad(&format!("{GRAD}.{h}"), h, batch, shapes)
            })?)
        } else {
            None
        };
        let grad_giou_reg = if self.has_prefix("expected.grad_giou.") {
            Some(self.read_grad(GRAD_GIOU_REG, Head::RegPreds, batch, shapes)?)
        } else {
            None
        };
        let sums = if self.has_prefix("expected.sums.") {
            let v = SUMS
                .iter()
                .map(|name| self.read_loss(&format!("expected.sums.{name}"), b))
                .collect::<Result<Vec<_>, _>>()?;
            Some(ExpectedSums::from_vecs(v))
        } else {
            None
        };
        let grad_global_ctr = if self.has_prefix(&format!("{GRAD_GLOBAL_CTR}.")) {
            Some(Gradients::try_from_fn(|h| {
                self.read_grad(&format!("{GRAD_GLOBAL_CTR}.{h}"), h, batch, shapes)
            })?)
        } else {
            None
        };
        Ok(Some(Expected {
            cls_loss,
            cnt_loss,
            reg_loss,
            reg_loss_giou,
            grad,
            grad_giou_reg,
            sums,
            batch: self.read_objective("batch")?,
            global_ctr: self.read_objective("global_ctr")?,
            grad_global_ctr,
        }))
    }

    /// `expected.{mode}.{name}_loss`, each `[1]`, when the file has any of them.
    fn read_objective(&self, mode: &str) -> Result<Option<ExpectedObjective>, FcosError> {
        if !self.has_prefix(&format!("expected.{mode}.")) {
            return Ok(None);
        }
        let mut values = [0.0; 4];
        for (v, name) in values.iter_mut().zip(OBJECTIVE) {
            *v = self.read_loss(&format!("expected.{mode}.{name}"), 1)?[0];
        }
        Ok(Some(ExpectedObjective::from_values(values)))
    }

    /// A per-image loss, `[B]`, in `f64`.
    fn read_loss(&self, name: &str, b: usize) -> Result<Vec<f64>, FcosError> {
        let want = [b];
        let view = self.get(name, &fmt_shape(&want))?;
        if view.shape() != want {
            return Err(FcosError::shape(
                name,
                fmt_shape(&want),
                fmt_shape(view.shape()),
            ));
        }
        decode(name, &view, false, |x| x)
    }

    /// `{prefix}.{l}` for every level, each shaped like `{head}.{l}`.
    fn read_grad(
        &self,
        prefix: &str,
        head: Head,
        batch: &Batch,
        shapes: &[(u32, u32)],
    ) -> Result<Vec<Vec<f32>>, FcosError> {
        let ch = head.channels(batch.classes);
        shapes
            .iter()
            .enumerate()
            .map(|(l, &(h, w))| {
                let want = [batch.batch, ch, h as usize, w as usize];
                let note = format!(" like {head}.{l}");
                self.read_exact(&format!("{prefix}.{l}"), &want, &note)
            })
            .collect()
    }
}

/// `B, C, H, W` of level tensor `name` of the class logits, given `B, C` of the
/// levels before it (`None` for level 0).
fn cls_level_shape(
    name: &str,
    s: &[usize],
    bc: Option<(usize, usize)>,
) -> Result<(usize, usize, u32, u32), FcosError> {
    let [b, c, h, w] = *s else {
        let want = match bc {
            None => "[B, C, H, W] (rank 4)".to_string(),
            Some((b, c)) => format!("[{b}, {c}, H, W] (rank 4)"),
        };
        return Err(FcosError::shape(name, want, shape_rank(s)));
    };
    match bc {
        None if b == 0 || c == 0 => {
            return Err(FcosError::shape(
                name,
                "[B, C, H, W] with B >= 1 and C >= 1",
                fmt_shape(s),
            ));
        }
        Some((b0, c0)) if (b, c) != (b0, c0) => {
            return Err(FcosError::shape(
                name,
                format!("[{b0}, {c0}, H, W] (B and C of cls_logits.0)"),
                fmt_shape(s),
            ));
        }
        _ => {}
    }
    let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(FcosError::shape(
            name,
            format!("[{b}, {c}, H, W] with H, W <= {}", u32::MAX),
            fmt_shape(s),
        ));
    };
    Ok((b, c, h32, w32))
}

/// The levels of `shapes`, refusing a pyramid without positions: then `B` and `C`
/// are not bounded by the data, and a batch of empty tensors is no case.
fn levels_with_positions(shapes: &[(u32, u32)]) -> Result<Levels, FcosError> {
    let levels = Levels::from_shapes(shapes)?;
    if levels.positions() == 0 {
        let got: Vec<String> = shapes.iter().map(|(h, w)| format!("{h}x{w}")).collect();
        return Err(FcosError::shape(
            "cls_logits",
            "at least one level with H_l·W_l > 0",
            format!("levels {}", got.join(", ")),
        ));
    }
    Ok(levels)
}
