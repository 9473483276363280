//! Case files: the safetensors format of docs/contract.md §5.
//!
//! A case file holds the network outputs per level (`cls_logits.{l}`,
//! `cnt_logits.{l}`, `reg_preds.{l}`), the flattened targets (`cls_targets`,
//! `cnt_targets`, `reg_targets`) and optionally the PyTorch results
//! (`expected.*`). [`read_case`] / [`parse_case`] read one into a [`Case`],
//! checking every shape against the layout of SPEC §1; [`write_case`] and
//! [`write_tensors`] write `F32` files in the same names.
//!
//! Reading never panics on malformed bytes: every problem is an [`FcosError`]
//! with a one-line message naming the file or tensor, what was expected and
//! what was found.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Batch, FcosError, Gradients, Head, Levels};

/// One case: the inputs of a loss call and, when the file carries them, the
/// PyTorch results to compare with.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The inputs (levels, `B`, `C`, network outputs and targets).
    pub batch: Batch,
    /// `expected.*` values, present when the file has `expected.cls_loss`,
    /// `expected.cnt_loss` and `expected.reg_loss`.
    pub expected: Option<Expected>,
}

/// The reference results stored in a case file (SPEC §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// `expected.cls_loss`, per image, `[B]`.
    pub cls_loss: Vec<f64>,
    /// `expected.cnt_loss`, per image, `[B]`.
    pub cnt_loss: Vec<f64>,
    /// `expected.reg_loss` (IoU mode), per image, `[B]`.
    pub reg_loss: Vec<f64>,
    /// `expected.reg_loss_giou` (GIoU mode), per image, `[B]`, when present.
    pub reg_loss_giou: Option<Vec<f64>>,
    /// `expected.grad.*`: gradients of `cls_loss + cnt_loss + reg_loss` (IoU mode),
    /// when present.
    pub grad: Option<Gradients>,
    /// `expected.grad_giou.reg_preds.{l}`: gradient of the GIoU `reg_loss` with
    /// respect to `reg_preds`, per level, flat NCHW, when present.
    pub grad_giou_reg: Option<Vec<Vec<f32>>>,
}

/// Reads a case file (SPEC §5 tensor names) and checks its shapes.
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

/// Writes a [`Case`] in the SPEC §5 names: the inputs and, when present, the
/// `expected.*` losses and gradients (all as `F32`). [`read_case`] reads it back.
///
/// The case is checked first: inconsistent lengths give a shape error and
/// nothing is written.
pub fn write_case(path: &Path, case: &Case) -> Result<(), FcosError> {
    let b = &case.batch;
    b.inputs().check_shapes(&b.levels, b.classes)?;
    let n = b.batch;
    let p = b.levels.positions();
    let mut out: Vec<F32Tensor<'_>> = Vec::new();
    let level_shape = |l: usize, ch: usize| {
        let (h, w) = b.levels.shapes().get(l).copied().unwrap_or((0, 0));
        vec![n, ch, h as usize, w as usize]
    };
    let inputs = b.inputs();
    for head in Head::ALL {
        let ch = head.channels(b.classes);
        for (l, data) in inputs.head(head).iter().enumerate() {
            out.push((
                format!("{head}.{l}"),
                level_shape(l, ch),
                Cow::Borrowed(*data),
            ));
        }
    }
    out.push((
        "cls_targets".into(),
        vec![n, p, 1],
        Cow::Borrowed(&b.cls_targets),
    ));
    out.push((
        "cnt_targets".into(),
        vec![n, p, 1],
        Cow::Borrowed(&b.cnt_targets),
    ));
    out.push((
        "reg_targets".into(),
        vec![n, p, 4],
        Cow::Borrowed(&b.reg_targets),
    ));
    if let Some(e) = &case.expected {
        let mut losses = vec![
            ("expected.cls_loss", &e.cls_loss),
            ("expected.cnt_loss", &e.cnt_loss),
            ("expected.reg_loss", &e.reg_loss),
        ];
        if let Some(g) = &e.reg_loss_giou {
            losses.push(("expected.reg_loss_giou", g));
        }
        for (name, v) in losses {
            if v.len() != n {
                return Err(FcosError::shape(
                    name,
                    format!("[{n}]"),
                    format!("[{}]", v.len()),
                ));
            }
            let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            out.push((name.to_string(), vec![n], Cow::Owned(data)));
        }
        let mut grads: Vec<(String, &Vec<Vec<f32>>, usize)> = Vec::new();
        if let Some(g) = &e.grad {
            for (head, levels) in g.iter() {
                grads.push((format!("{GRAD}.{head}"), levels, head.channels(b.classes)));
            }
        }
        if let Some(g) = &e.grad_giou_reg {
            grads.push((GRAD_GIOU_REG.to_string(), g, 4));
        }
        for (name, levels, ch) in grads {
            let name = name.as_str();
            if levels.len() != b.levels.len() {
                return Err(FcosError::shape(
                    name,
                    format!("{} levels", b.levels.len()),
                    format!("{} levels", levels.len()),
                ));
            }
            for (l, data) in levels.iter().enumerate() {
                let shape = level_shape(l, ch);
                let want = b.levels.level_len(l, n, ch);
                if data.len() != want {
                    return Err(FcosError::shape(
                        format!("{name}.{l}"),
                        format!("{} = {want} elements", fmt_shape(&shape)),
                        format!("{} elements", data.len()),
                    ));
                }
                out.push((format!("{name}.{l}"), shape, Cow::Borrowed(data)));
            }
        }
    }
    write_f32(path, &out)
}

// ---------------------------------------------------------------------------
// Reading

/// Prefix of the gradients of the IoU objective: `expected.grad.{head}.{l}`.
const GRAD: &str = "expected.grad";
const GRAD_GIOU_REG: &str = "expected.grad_giou.reg_preds";
const LOSSES: [&str; 3] = [
    "expected.cls_loss",
    "expected.cnt_loss",
    "expected.reg_loss",
];

/// A parsed safetensors buffer plus the label (path) used in messages.
struct Reader<'a> {
    st: SafeTensors<'a>,
    names: HashSet<String>,
    src: &'a str,
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

impl<'a> Reader<'a> {
    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
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

    fn case(&self) -> Result<Case, FcosError> {
        // L: consecutive cls_logits.{l} from 0.
        let mut num_levels = 0usize;
        while self.has(&format!("cls_logits.{num_levels}")) {
            num_levels += 1;
        }
        if num_levels == 0 {
            return Err(self.missing("cls_logits.0", "[B, C, H_0, W_0]"));
        }
        self.check_level_names(num_levels)?;

        // cls_logits fix B, C and the level shapes.
        let mut cls_logits = Vec::with_capacity(num_levels);
        let mut shapes: Vec<(u32, u32)> = Vec::with_capacity(num_levels);
        let mut bc: Option<(usize, usize)> = None;
        for l in 0..num_levels {
            let name = format!("cls_logits.{l}");
            let view = self.get(&name, "[B, C, H, W]")?;
            let s = view.shape();
            let (b, c, h, w) = match *s {
                [b, c, h, w] => (b, c, h, w),
                _ => {
                    let want = match bc {
                        None => "[B, C, H, W] (rank 4)".to_string(),
                        Some((b, c)) => format!("[{b}, {c}, H, W] (rank 4)"),
                    };
                    return Err(FcosError::shape(name, want, shape_rank(s)));
                }
            };
            match bc {
                None => {
                    if b == 0 || c == 0 {
                        return Err(FcosError::shape(
                            name,
                            "[B, C, H, W] with B >= 1 and C >= 1",
                            fmt_shape(s),
                        ));
                    }
                    bc = Some((b, c));
                }
                Some((b0, c0)) if (b, c) != (b0, c0) => {
                    return Err(FcosError::shape(
                        name,
                        format!("[{b0}, {c0}, H, W] (B and C of cls_logits.0)"),
                        fmt_shape(s),
                    ));
                }
                Some(_) => {}
            }
            let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
                return Err(FcosError::shape(
                    name,
                    format!("[{b}, {c}, H, W] with H, W <= {}", u32::MAX),
                    fmt_shape(s),
                ));
            };
            shapes.push((h32, w32));
            cls_logits.push(decode_f32(&name, &view, false)?);
        }
        let Some((b, c)) = bc else {
            return Err(self.missing("cls_logits.0", "[B, C, H_0, W_0]"));
        };
        let levels = Levels::from_shapes(&shapes)?;
        let p = levels.positions();
        if p == 0 {
            // Without positions B and C are not bounded by the data; refuse rather
            // than hand on a batch of empty tensors.
            let got: Vec<String> = shapes.iter().map(|(h, w)| format!("{h}x{w}")).collect();
            return Err(FcosError::shape(
                "cls_logits",
                "at least one level with H_l·W_l > 0",
                format!("levels {}", got.join(", ")),
            ));
        }

        let cnt_logits = self.read_levels("cnt_logits", b, 1, &shapes)?;
        let reg_preds = self.read_levels("reg_preds", b, 4, &shapes)?;

        let cls_targets = self.read_target("cls_targets", b, p, true)?;
        let cnt_targets = self.read_target("cnt_targets", b, p, false)?;
        let reg_targets = {
            let want = [b, p, 4];
            let view = self.get("reg_targets", &fmt_shape(&want))?;
            if view.shape() != want {
                return Err(FcosError::shape(
                    "reg_targets",
                    fmt_shape(&want),
                    fmt_shape(view.shape()),
                ));
            }
            decode_f32("reg_targets", &view, false)?
        };

        let batch = Batch {
            levels,
            batch: b,
            classes: c,
            cls_logits,
            cnt_logits,
            reg_preds,
            cls_targets,
            cnt_targets,
            reg_targets,
        };
        let expected = self.expected(&batch, &shapes)?;
        Ok(Case { batch, expected })
    }

    /// Every `{head}.{n}` name (inputs and gradients) must be one of the `L` levels.
    fn check_level_names(&self, num_levels: usize) -> Result<(), FcosError> {
        let prefixes = Head::ALL
            .iter()
            .map(|h| h.name().to_string())
            .chain(Head::ALL.iter().map(|h| format!("{GRAD}.{h}")))
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
        head: &str,
        b: usize,
        ch: usize,
        shapes: &[(u32, u32)],
    ) -> Result<Vec<Vec<f32>>, FcosError> {
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

    /// `[B, P, 1]` or `[B, P]`.
    fn read_target(
        &self,
        name: &str,
        b: usize,
        p: usize,
        allow_int: bool,
    ) -> Result<Vec<f32>, FcosError> {
        let want = format!("{} (or [{b}, {p}])", fmt_shape(&[b, p, 1]));
        let view = self.get(name, &want)?;
        let s = view.shape();
        if s != [b, p, 1] && s != [b, p] {
            return Err(FcosError::shape(name, want, fmt_shape(s)));
        }
        decode_f32(name, &view, allow_int)
    }

    fn expected(
        &self,
        batch: &Batch,
        shapes: &[(u32, u32)],
    ) -> Result<Option<Expected>, FcosError> {
        if !self.names.iter().any(|n| n.starts_with("expected.")) {
            return Ok(None);
        }
        let b = batch.batch;
        let want = [b];
        let loss = |name: &str| -> Result<Vec<f64>, FcosError> {
            let view = self.get(name, &fmt_shape(&want))?;
            if view.shape() != want {
                return Err(FcosError::shape(
                    name,
                    fmt_shape(&want),
                    fmt_shape(view.shape()),
                ));
            }
            decode(name, &view, false, |x| x)
        };
        let [cls, cnt, reg] = LOSSES;
        let cls_loss = loss(cls)?;
        let cnt_loss = loss(cnt)?;
        let reg_loss = loss(reg)?;
        let reg_loss_giou = if self.has("expected.reg_loss_giou") {
            Some(loss("expected.reg_loss_giou")?)
        } else {
            None
        };

        let grad_levels = |prefix: &str, ch: usize| -> Result<Vec<Vec<f32>>, FcosError> {
            let input = prefix.rsplit('.').next().unwrap_or(prefix);
            shapes
                .iter()
                .enumerate()
                .map(|(l, &(h, w))| {
                    let want = [b, ch, h as usize, w as usize];
                    let note = format!(" like {input}.{l}");
                    self.read_exact(&format!("{prefix}.{l}"), &want, &note)
                })
                .collect()
        };
        let grad = if self.names.iter().any(|n| n.starts_with("expected.grad.")) {
            Some(Gradients::try_from_fn(|h| {
                grad_levels(&format!("{GRAD}.{h}"), h.channels(batch.classes))
            })?)
        } else {
            None
        };
        let grad_giou_reg = if self
            .names
            .iter()
            .any(|n| n.starts_with("expected.grad_giou."))
        {
            Some(grad_levels(GRAD_GIOU_REG, 4)?)
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
        }))
    }
}

fn decode_f32(name: &str, view: &TensorView<'_>, allow_int: bool) -> Result<Vec<f32>, FcosError> {
    // The first finite value (f64 or a large integer) that f32 cannot hold: it would
    // read as ±Inf and be reported as not finite, which the file's value is not.
    let seen = std::cell::Cell::new(0usize);
    let overflow = std::cell::Cell::new(None);
    let out = decode(name, view, allow_int, |x| {
        let y = x as f32;
        if overflow.get().is_none() && x.is_finite() && !y.is_finite() {
            overflow.set(Some((seen.get(), x)));
        }
        seen.set(seen.get() + 1);
        y
    })?;
    match overflow.get() {
        Some((index, value)) => Err(FcosError::Value {
            tensor: name.to_string(),
            index,
            value,
            problem: "outside the f32 range".to_string(),
        }),
        None => Ok(out),
    }
}

/// Little-endian elements of `N` bytes, without alignment assumptions.
fn le<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// Converts a tensor to `T` through `f64` (exact for every float dtype read).
/// Integer dtypes are accepted only with `allow_int` (class-index targets).
fn decode<T>(
    name: &str,
    view: &TensorView<'_>,
    allow_int: bool,
    conv: impl Fn(f64) -> T,
) -> Result<Vec<T>, FcosError> {
    let dtype = view.dtype();
    let data = view.data();
    let float = &conv;
    let (width, values): (usize, Option<Vec<T>>) = match dtype {
        Dtype::F32 => (4, Some(le(data, |a| float(f32::from_le_bytes(a) as f64)))),
        Dtype::F64 => (8, Some(le(data, |a| float(f64::from_le_bytes(a))))),
        Dtype::F16 => (
            2,
            Some(le(data, |a| float(half::f16::from_le_bytes(a).to_f64()))),
        ),
        Dtype::BF16 => (
            2,
            Some(le(data, |a| float(half::bf16::from_le_bytes(a).to_f64()))),
        ),
        Dtype::I64 if allow_int => (8, Some(le(data, |a| float(i64::from_le_bytes(a) as f64)))),
        Dtype::I32 if allow_int => (4, Some(le(data, |a| float(i32::from_le_bytes(a) as f64)))),
        Dtype::I16 if allow_int => (2, Some(le(data, |a| float(i16::from_le_bytes(a) as f64)))),
        Dtype::I8 if allow_int => (1, Some(le(data, |a| float(i8::from_le_bytes(a) as f64)))),
        Dtype::U64 if allow_int => (8, Some(le(data, |a| float(u64::from_le_bytes(a) as f64)))),
        Dtype::U32 if allow_int => (4, Some(le(data, |a| float(u32::from_le_bytes(a) as f64)))),
        Dtype::U16 if allow_int => (2, Some(le(data, |a| float(u16::from_le_bytes(a) as f64)))),
        Dtype::U8 if allow_int => (1, Some(le(data, |a| float(u8::from_le_bytes(a) as f64)))),
        _ => (0, None),
    };
    let Some(values) = values else {
        let what = match dtype {
            Dtype::I64
            | Dtype::I32
            | Dtype::I16
            | Dtype::I8
            | Dtype::U64
            | Dtype::U32
            | Dtype::U16
            | Dtype::U8
            | Dtype::BOOL => "cannot hold real values",
            _ => "is not supported",
        };
        let allowed = if allow_int {
            "a float dtype (F32, F16, BF16 or F64) or an integer dtype (I64, I32, I16, I8, U64, U32, U16, U8)"
        } else {
            "a float dtype (F32, F16, BF16 or F64)"
        };
        return Err(FcosError::File(format!(
            "tensor '{name}': dtype {dtype} {what}; expected {allowed}"
        )));
    };
    if data.len() % width != 0 {
        return Err(FcosError::File(format!(
            "tensor '{name}': {} bytes of data is not a whole number of {dtype} elements",
            data.len()
        )));
    }
    let want = view
        .shape()
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if want != Some(values.len()) {
        return Err(FcosError::shape(
            name,
            format!(
                "{} elements for shape {}",
                fmt_opt(want),
                fmt_shape(view.shape())
            ),
            format!("{} elements", values.len()),
        ));
    }
    Ok(values)
}

// ---------------------------------------------------------------------------
// Writing

/// `(name, shape, data)` of one `F32` tensor to write.
type F32Tensor<'a> = (String, Vec<usize>, Cow<'a, [f32]>);

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
        let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
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

// ---------------------------------------------------------------------------
// Formatting

fn fmt_shape(s: &[usize]) -> String {
    let mut out = String::from("[");
    for (i, d) in s.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{d}");
    }
    out.push(']');
    out
}

fn shape_rank(s: &[usize]) -> String {
    format!("{} (rank {})", fmt_shape(s), s.len())
}

fn fmt_opt(n: Option<usize>) -> String {
    n.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string())
}

/// Messages are one line: fold any line breaks from underlying errors.
fn one_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        s
    }
}
