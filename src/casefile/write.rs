//! Writing case files and other `F32` safetensors files (the CLI's gradients).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::format::{elements, fmt_opt, fmt_shape, one_line};
use super::{
    Case, CaseBoxes, Expected, GRAD, GRAD_GIOU_REG, GRAD_GLOBAL_CTR, LOSSES, OBJECTIVE,
    REG_LOSS_GIOU, SUMS,
};
use crate::{Batch, FcosError, Head, Input, TensorLayout};

/// `(name, shape, data)` of one `F32` tensor to write.
type F32Tensor<'a> = (String, Vec<usize>, Cow<'a, [f32]>);

/// Writes `F32` tensors `(name, shape, data)` to a safetensors file at `path`.
///
/// Each `data` must hold exactly `Π shape` elements and names must be unique and
/// non-empty.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), FcosError> {
    let borrowed: Vec<F32Tensor<'_>> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), Cow::Borrowed(d.as_slice())))
        .collect();
    write_f32(path, &borrowed)
}

/// Writes a [`Case`] in the docs/contract.md §5 names: the inputs and, when
/// present, the `expected.*` losses and gradients (all as `F32`). [`read_case`]
/// reads it back.
///
/// The case is checked first: inconsistent lengths give a shape error and
/// nothing is written.
///
/// [`read_case`]: super::read_case
pub fn write_case(path: &Path, case: &Case) -> Result<(), FcosError> {
    let b = &case.batch;
    b.inputs().check_shapes(&b.levels, b.classes)?;
    let mut out = input_tensors(b);
    if !case.targets_given {
        // Read back, the file says the same: no targets, only boxes.
        out.retain(|t| {
            Input::ALL
                .iter()
                .all(|i| i.layout() == TensorLayout::PerLevel || t.0 != i.name())
        });
    }
    if let Some(bx) = &case.boxes {
        out.extend(box_tensors(b, bx)?);
    }
    if let Some(e) = &case.expected {
        out.extend(loss_tensors(b, e)?);
        out.extend(norm_tensors(b, e)?);
        out.extend(grad_tensors(b, e)?);
    }
    write_f32(path, &out)
}

/// `gt_boxes [B, M, 4]` and `gt_classes [B, M]` (written as `F32`, whole numbers).
fn box_tensors<'a>(b: &Batch, bx: &'a CaseBoxes) -> Result<Vec<F32Tensor<'a>>, FcosError> {
    let m = bx.boxes_per_image;
    if bx.boxes.len() != b.batch * m * 4 || bx.classes.len() != b.batch * m {
        return Err(FcosError::shape(
            "gt_boxes",
            format!("[{}, {m}, 4] boxes and [{}, {m}] classes", b.batch, b.batch),
            format!("{} and {} elements", bx.boxes.len(), bx.classes.len()),
        ));
    }
    let classes: Vec<f32> = bx.classes.iter().map(|&c| c as f32).collect();
    Ok(vec![
        (
            "gt_boxes".into(),
            vec![b.batch, m, 4],
            Cow::Borrowed(&bx.boxes[..]),
        ),
        ("gt_classes".into(), vec![b.batch, m], Cow::Owned(classes)),
    ])
}

/// `[B, ch, H_l, W_l]`: the shape of level `l` of a head with `ch` channels.
fn level_shape(b: &Batch, l: usize, ch: usize) -> Vec<usize> {
    let (h, w) = b.levels.shapes().get(l).copied().unwrap_or((0, 0));
    vec![b.batch, ch, h as usize, w as usize]
}

/// The six inputs: `{head}.{l}` per level, then the flattened targets `[B, P, ch]`.
fn input_tensors(b: &Batch) -> Vec<F32Tensor<'_>> {
    let inputs = b.inputs();
    let p = b.levels.positions();
    let mut out = Vec::new();
    for input in Input::ALL {
        let ch = input.channels(b.classes);
        for (l, data) in inputs.parts(input).iter().enumerate() {
            let (name, shape) = match input.layout() {
                TensorLayout::PerLevel => (format!("{input}.{l}"), level_shape(b, l, ch)),
                TensorLayout::Flattened => (input.name().to_string(), vec![b.batch, p, ch]),
            };
            out.push((name, shape, Cow::Borrowed(*data)));
        }
    }
    out
}

/// `expected.{cls,cnt,reg}_loss` and, when present, `expected.reg_loss_giou`,
/// each `[B]`.
fn loss_tensors<'a>(b: &Batch, e: &Expected) -> Result<Vec<F32Tensor<'a>>, FcosError> {
    let n = b.batch;
    let [cls, cnt, reg] = LOSSES;
    let mut losses = vec![(cls, &e.cls_loss), (cnt, &e.cnt_loss), (reg, &e.reg_loss)];
    if let Some(g) = &e.reg_loss_giou {
        losses.push((REG_LOSS_GIOU, g));
    }
    losses
        .into_iter()
        .map(|(name, v)| per_image(name.to_string(), v, n))
        .collect()
}

/// A per-image tensor `[B]` named `name`, or a shape error naming it.
fn per_image<'a>(name: String, v: &[f64], n: usize) -> Result<F32Tensor<'a>, FcosError> {
    if v.len() != n {
        return Err(FcosError::shape(
            name,
            format!("[{n}]"),
            format!("[{}]", v.len()),
        ));
    }
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Ok((name, vec![n], Cow::Owned(data)))
}

/// `expected.sums.*` (`[B]` each) and the `expected.{batch,global_ctr}.*`
/// losses (`[1]` each), when present.
fn norm_tensors<'a>(b: &Batch, e: &Expected) -> Result<Vec<F32Tensor<'a>>, FcosError> {
    let n = b.batch;
    let mut out = Vec::new();
    if let Some(sums) = &e.sums {
        for (name, v) in SUMS.iter().zip(sums.as_vecs()) {
            out.push(per_image(format!("expected.sums.{name}"), v, n)?);
        }
    }
    for (mode, objective) in [("batch", &e.batch), ("global_ctr", &e.global_ctr)] {
        for (name, v) in objective
            .iter()
            .flat_map(|o| OBJECTIVE.iter().zip(o.values()))
        {
            out.push((
                format!("expected.{mode}.{name}"),
                vec![1],
                Cow::Owned(vec![v as f32]),
            ));
        }
    }
    Ok(out)
}

/// `expected.grad.{head}.{l}`, `expected.grad_giou.reg_preds.{l}` and
/// `expected.grad_global_ctr.{head}.{l}`, when present, each shaped like its
/// head's level.
fn grad_tensors<'a>(b: &Batch, e: &'a Expected) -> Result<Vec<F32Tensor<'a>>, FcosError> {
    let mut grads: Vec<(String, &Vec<Vec<f32>>, Head)> = Vec::new();
    if let Some(g) = &e.grad {
        for (head, levels) in g.iter() {
            grads.push((format!("{GRAD}.{head}"), levels, head));
        }
    }
    if let Some(g) = &e.grad_giou_reg {
        grads.push((GRAD_GIOU_REG.to_string(), g, Head::RegPreds));
    }
    if let Some(g) = &e.grad_global_ctr {
        for (head, levels) in g.iter() {
            grads.push((format!("{GRAD_GLOBAL_CTR}.{head}"), levels, head));
        }
    }
    let mut out = Vec::new();
    for (name, levels, head) in grads {
        if levels.len() != b.levels.len() {
            return Err(FcosError::shape(
                name,
                format!("{} levels", b.levels.len()),
                format!("{} levels", levels.len()),
            ));
        }
        let ch = head.channels(b.classes);
        for (l, data) in levels.iter().enumerate() {
            let shape = level_shape(b, l, ch);
            let want = b.levels.level_len(l, b.batch, ch);
            if data.len() != want {
                return Err(FcosError::shape(
                    format!("{name}.{l}"),
                    format!("{} = {want} elements", fmt_shape(&shape)),
                    format!("{} elements", data.len()),
                ));
            }
            out.push((format!("{name}.{l}"), shape, Cow::Borrowed(data.as_slice())));
        }
    }
    Ok(out)
}

/// Checks names (non-empty, unique) and lengths, then writes the tensors.
fn write_f32(path: &Path, tensors: &[F32Tensor<'_>]) -> Result<(), FcosError> {
    let mut seen = HashSet::new();
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if name.is_empty() {
            return Err(FcosError::File(format!(
                "cannot write '{}': a tensor has an empty name",
                path.display()
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(FcosError::File(format!(
                "cannot write '{}': tensor '{name}' appears twice",
                path.display()
            )));
        }
        let want = elements(shape);
        if want != Some(data.len()) {
            return Err(FcosError::shape(
                name.as_str(),
                format!("{} = {} elements", fmt_shape(shape), fmt_opt(want)),
                format!("{} elements", data.len()),
            ));
        }
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.push((name.clone(), shape.clone(), raw));
    }
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.as_str(), v))
                .map_err(|e| FcosError::File(one_line(format!("tensor '{name}': {e}"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| FcosError::File(one_line(format!("cannot write '{}': {e}", path.display()))))
}
