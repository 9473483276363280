//! The WGSL kernels and their variants. Each kernel is assembled from files:
//! `common.wgsl` (parameters and numerics), for the fused pass and its roofline
//! `reduce.wgsl` (the workgroup reduction) and `segment.wgsl` (their bindings),
//! then the kernel's own file, with the `#ifdef NAME` / `#ifndef NAME` /
//! `#else` / `#endif` blocks resolved for the variant (WGSL has neither `#include`
//! nor a preprocessor). The rule for what is a define, an override constant or a
//! uniform is stated at the top of `shaders/common.wgsl`.

/// Default threads per workgroup of the reduction kernels (the default of the
/// `WG` override in `shaders/common.wgsl`).
pub const WORKGROUP_SIZE: u32 = 256;

/// One shader file: its name (for messages) and text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct File {
    pub name: &'static str,
    pub text: &'static str,
}

/// A file of `shaders/`, by name.
macro_rules! shader_file {
    ($name:literal) => {
        File {
            name: $name,
            text: include_str!(concat!("../../shaders/", $name)),
        }
    };
}

const COMMON: File = shader_file!("common.wgsl");
const REDUCE: File = shader_file!("reduce.wgsl");
const SEGMENT: File = shader_file!("segment.wgsl");
const FUSED: File = shader_file!("fused.wgsl");
#[cfg(feature = "bench")]
const ROOFLINE: File = shader_file!("roofline.wgsl");
const FINALIZE: File = shader_file!("finalize.wgsl");
const COUNT: File = shader_file!("count.wgsl");
const NORM: File = shader_file!("norm.wgsl");
const SUM2: File = shader_file!("sum2.wgsl");
const COPY_WORDS: File = shader_file!("copy_words.wgsl");
const BOX_TILES: File = shader_file!("box_tiles.wgsl");
const CULL: File = shader_file!("cull.wgsl");
const ASSIGN: File = shader_file!("assign.wgsl");
const COUNT_BOXES: File = shader_file!("count_boxes.wgsl");
const SUM_COUNTS: File = shader_file!("sum_counts.wgsl");
const PACK_HALF: File = shader_file!("pack_half.wgsl");

use crate::input::Dtype;

/// A pipeline the engine may build: a kernel in one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// The fused loss pass; with `backward` it also writes the gradients, with
    /// `checks` it flags bad input values, with `boxes` it assigns each
    /// position's targets from the ground-truth boxes instead of reading them;
    /// it reads heads of `heads` (halves as `u32` words, widened exactly).
    Fused {
        backward: bool,
        checks: bool,
        boxes: bool,
        heads: Dtype,
    },
    /// Each tile's list of the boxes that may hold one of its points (every
    /// call from boxes, first).
    CullBoxes,
    /// Target assignment from the tiles' lists: positives and centerness sums
    /// per tile; with `targets` it also writes the three target tensors (the
    /// target pass).
    AssignBoxes { targets: bool },
    /// The per-image sum of [`Kernel::AssignBoxes`]' workgroup counts.
    SumCounts,
    /// The fused pass's memory roofline (bench harness): its reads (all of them
    /// with `read_all`, as the checked pass) and, with `backward`, its writes.
    #[cfg(feature = "bench")]
    Roofline {
        backward: bool,
        read_all: bool,
        heads: Dtype,
    },
    /// The positives and centerness-target sum per image.
    Count,
    /// The call's totals and each image's gradient factors (docs/contract.md §8).
    Normalize,
    /// The per-image reduce of the partial sums.
    Finalize,
    /// The raw word copy that brings flagged inputs to the host.
    CopyWords,
    /// A run of `f32` gradients rounded into 2-byte elements of the heads'
    /// dtype (`bf16`, else `f16`), where a call asks for half gradients.
    PackHalf { bf16: bool },
}

/// What a binding of a kernel's bind group 0 is, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    Uniform,
    Read,
    ReadWrite,
    /// A binding number this variant leaves out (the fused pass from boxes binds
    /// two ground-truth buffers where the other variants bind three targets).
    Unused,
}

/// The pipeline constants every kernel is built with: the engine's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// γ = 2: the focal factor is a square, decided at compile time.
    pub gamma_is_two: bool,
    /// Threads per workgroup (`WG`), a power of two.
    pub workgroup_size: u32,
    /// Reduce with subgroup operations (needs `Features::SUBGROUP`).
    pub subgroups: bool,
}

/// One assembled shader: its name, entry point, full source and override values.
#[derive(Debug, Clone)]
pub(crate) struct ShaderSource {
    /// Kernel file and variant, for labels and messages.
    pub name: String,
    /// The compute entry point.
    pub entry_point: &'static str,
    /// The files one after another, preprocessed.
    pub source: String,
    /// The `override` values the pipeline is made with.
    pub constants: Vec<(&'static str, f64)>,
}

impl Kernel {
    /// The files the kernel is assembled from, and its entry point.
    fn files(self) -> (Vec<File>, &'static str) {
        match self {
            Kernel::Fused { boxes: false, .. } => (vec![COMMON, REDUCE, SEGMENT, FUSED], "fused"),
            Kernel::Fused { boxes: true, .. } => (
                vec![COMMON, REDUCE, SEGMENT, BOX_TILES, ASSIGN, FUSED],
                "fused",
            ),
            Kernel::CullBoxes => (vec![COMMON, BOX_TILES, CULL], "cull_boxes"),
            Kernel::AssignBoxes { .. } => (
                vec![COMMON, REDUCE, BOX_TILES, ASSIGN, COUNT_BOXES],
                "count_boxes",
            ),
            Kernel::SumCounts => (vec![COMMON, SUM2, SUM_COUNTS], "sum_counts"),
            #[cfg(feature = "bench")]
            Kernel::Roofline { .. } => (vec![COMMON, REDUCE, SEGMENT, ROOFLINE], "roofline"),
            Kernel::Count => (vec![COMMON, SUM2, COUNT], "count_positives"),
            Kernel::Normalize => (vec![COMMON, SUM2, NORM], "normalize"),
            Kernel::Finalize => (vec![COMMON, FINALIZE], "finalize"),
            Kernel::CopyWords => (vec![COPY_WORDS], "copy_words"),
            Kernel::PackHalf { .. } => (vec![COMMON, PACK_HALF], "pack_half"),
        }
    }

    fn backward(self) -> bool {
        match self {
            Kernel::Fused { backward, .. } => backward,
            #[cfg(feature = "bench")]
            Kernel::Roofline { backward, .. } => backward,
            Kernel::Count
            | Kernel::Normalize
            | Kernel::Finalize
            | Kernel::CopyWords
            | Kernel::AssignBoxes { .. }
            | Kernel::CullBoxes
            | Kernel::SumCounts
            | Kernel::PackHalf { .. } => false,
        }
    }

    /// A file name for this variant under `spec`.
    fn stem(self, spec: Spec, subgroups: bool, s: &ShaderSource) -> String {
        let mut parts: Vec<String> = vec![match self {
            Kernel::Fused { .. } => "fused".into(),
            #[cfg(feature = "bench")]
            Kernel::Roofline { .. } => "roofline".into(),
            Kernel::Count => "count".into(),
            Kernel::Normalize => "normalize".into(),
            Kernel::Finalize => "finalize".into(),
            Kernel::CopyWords => "copy-words".into(),
            Kernel::CullBoxes => "cull-boxes".into(),
            Kernel::AssignBoxes { targets } => {
                if targets {
                    "target-pass".into()
                } else {
                    "count-boxes".into()
                }
            }
            Kernel::SumCounts => "sum-counts".into(),
            Kernel::PackHalf { bf16 } => {
                if bf16 {
                    "pack-bf16".into()
                } else {
                    "pack-f16".into()
                }
            }
        }];
        match self {
            Kernel::Fused {
                backward,
                checks,
                boxes,
                ..
            } => {
                parts.push(if backward { "backward" } else { "forward" }.into());
                if checks {
                    parts.push("checks".into());
                }
                if boxes {
                    parts.push("boxes".into());
                }
            }
            #[cfg(feature = "bench")]
            Kernel::Roofline {
                backward, read_all, ..
            } => {
                parts.push(if backward { "backward" } else { "forward" }.into());
                if read_all {
                    parts.push("read-all".into());
                }
            }
            _ => {}
        }
        if let Some(heads) = self.heads().filter(|h| h.is_half()) {
            parts.push(heads.name().into());
        }
        if subgroups {
            parts.push("sg".into());
        }
        if self != Kernel::CopyWords {
            parts.push(format!("wg{}", spec.workgroup_size));
        }
        if s.constants.iter().any(|c| c.0 == "GAMMA_IS_TWO") {
            parts.push(if spec.gamma_is_two {
                "g2".into()
            } else {
                "g".into()
            });
        }
        parts.join("-")
    }

    /// The element type of the heads the kernel reads (the fused pass and its
    /// roofline).
    fn heads(self) -> Option<Dtype> {
        match self {
            Kernel::Fused { heads, .. } => Some(heads),
            #[cfg(feature = "bench")]
            Kernel::Roofline { heads, .. } => Some(heads),
            _ => None,
        }
    }

    /// Whether the kernel reduces a workgroup with `reduce.wgsl`.
    fn reduces(self) -> bool {
        self.files().0.iter().any(|f| f.name == REDUCE.name)
    }

    /// The `#ifdef` names of this variant under `spec`.
    fn defines(self, spec: Spec) -> Vec<&'static str> {
        let mut defines = Vec::new();
        if self.backward() {
            defines.push("BACKWARD");
        }
        if spec.subgroups && self.reduces() {
            defines.push("SUBGROUPS");
        }
        match self {
            Kernel::Fused { boxes: true, .. } => defines.push("BOXES"),
            Kernel::AssignBoxes { targets: true } => defines.push("TARGETS"),
            _ => {}
        }
        if self.heads().is_some_and(Dtype::is_half) {
            defines.push("HALF");
        }
        defines
    }

    /// The `override` values of this variant under `spec`.
    fn constants(self, spec: Spec) -> Vec<(&'static str, f64)> {
        let wg = ("WG", f64::from(spec.workgroup_size));
        let flag = |b: bool| f64::from(u8::from(b));
        // Half heads: which half format the words hold.
        let half: Vec<(&'static str, f64)> = match self.heads() {
            Some(h) if h.is_half() => vec![("HEADS_BF16", flag(h == Dtype::Bf16))],
            _ => vec![],
        };
        match self {
            Kernel::Fused { checks, .. } => [
                vec![
                    wg,
                    ("GAMMA_IS_TWO", flag(spec.gamma_is_two)),
                    ("CHECKS", flag(checks)),
                ],
                half,
            ]
            .concat(),
            #[cfg(feature = "bench")]
            Kernel::Roofline { read_all, .. } => {
                [vec![wg, ("READ_ALL", flag(read_all))], half].concat()
            }
            Kernel::Count
            | Kernel::Normalize
            | Kernel::Finalize
            | Kernel::AssignBoxes { .. }
            | Kernel::CullBoxes
            | Kernel::SumCounts => vec![wg],
            Kernel::PackHalf { bf16 } => vec![wg, ("HEADS_BF16", flag(bf16))],
            Kernel::CopyWords => vec![],
        }
    }

    /// The kernel's bindings, in order from binding 0.
    pub fn bindings(self) -> Vec<Binding> {
        use Binding::{Read, ReadWrite, Uniform};
        match self {
            Kernel::Fused { boxes, .. } => fused_bindings(self.backward(), boxes),
            #[cfg(feature = "bench")]
            Kernel::Roofline { .. } => fused_bindings(self.backward(), false),
            Kernel::AssignBoxes { targets: false } => vec![Uniform, Read, Read, ReadWrite],
            Kernel::AssignBoxes { targets: true } => {
                vec![
                    Uniform, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
                ]
            }
            Kernel::SumCounts => vec![Uniform, Read, ReadWrite],
            Kernel::CullBoxes => vec![Uniform, Read, Read, ReadWrite, ReadWrite],
            Kernel::Count => vec![Uniform, Read, ReadWrite],
            Kernel::Finalize => vec![Uniform, Read, Read, ReadWrite],
            Kernel::Normalize => vec![Uniform, ReadWrite, Read, ReadWrite],
            Kernel::CopyWords => vec![Read, ReadWrite],
            Kernel::PackHalf { .. } => vec![Uniform, Read, ReadWrite],
        }
    }

    /// Storage buffers the kernel binds (a device limit).
    pub fn storage_buffers(self) -> u32 {
        self.bindings()
            .iter()
            .filter(|b| matches!(b, Binding::Read | Binding::ReadWrite))
            .count() as u32
    }

    /// The kernel's source for `spec`, or the preprocessor's error naming the
    /// file and line.
    pub fn source(self, spec: Spec) -> Result<ShaderSource, String> {
        let (files, entry_point) = self.files();
        let defines = self.defines(spec);
        let mut source = String::new();
        for file in &files {
            source.push_str(&preprocess(*file, &defines)?);
            source.push('\n');
        }
        let main = files.last().map_or("", |f| f.name);
        let name = if defines.is_empty() {
            format!("{main} {self:?}")
        } else {
            format!("{main} {self:?} [{}]", defines.join(", "))
        };
        Ok(ShaderSource {
            name,
            entry_point,
            source,
            constants: self.constants(spec),
        })
    }

    /// This kernel's variant under `spec`, as [`shader_variants`] exports it.
    pub fn variant(self, spec: Spec) -> Result<ShaderVariant, String> {
        Ok(self.variant_of(spec, self.source(spec)?))
    }

    fn variant_of(self, spec: Spec, s: ShaderSource) -> ShaderVariant {
        let sg = s.name.contains("SUBGROUPS");
        ShaderVariant {
            stem: self.stem(spec, sg, &s),
            name: s.name,
            entry_point: s.entry_point.to_string(),
            source: s.source,
            constants: s
                .constants
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            features: sg.then(|| "subgroups".to_string()).into_iter().collect(),
            bindings: self
                .bindings()
                .iter()
                .map(|b| match b {
                    Binding::Uniform => Some("uniform".into()),
                    Binding::Read => Some("read-only-storage".into()),
                    Binding::ReadWrite => Some("storage".into()),
                    Binding::Unused => None,
                })
                .collect(),
        }
    }

    /// Every kernel variant the engine may build, with the feature set it was
    /// compiled with.
    pub fn all() -> Vec<Kernel> {
        let mut out = vec![
            Kernel::Count,
            Kernel::Normalize,
            Kernel::Finalize,
            Kernel::CopyWords,
            Kernel::AssignBoxes { targets: false },
            Kernel::AssignBoxes { targets: true },
            Kernel::CullBoxes,
            Kernel::SumCounts,
            Kernel::PackHalf { bf16: false },
            Kernel::PackHalf { bf16: true },
        ];
        for heads in Dtype::ALL {
            for backward in [false, true] {
                for flag in [false, true] {
                    for boxes in [false, true] {
                        out.push(Kernel::Fused {
                            backward,
                            checks: flag,
                            boxes,
                            heads,
                        });
                    }
                    #[cfg(feature = "bench")]
                    out.push(Kernel::Roofline {
                        backward,
                        read_all: flag,
                        heads,
                    });
                }
            }
        }
        out
    }
}

/// The fused pass's bindings: params, the six inputs in `Input::ALL` order (from
/// boxes: the three heads, the boxes and the classes), the partial sums;
/// backward adds the gradient factors and the three gradients.
fn fused_bindings(backward: bool, boxes: bool) -> Vec<Binding> {
    use Binding::{Read, ReadWrite, Uniform, Unused};
    let last_input = if boxes { Unused } else { Read };
    let mut out = vec![Uniform, Read, Read, Read, Read, Read, last_input, ReadWrite];
    if backward {
        // Binding 8 (the gradient factors) is read through the partials binding.
        out.extend([Unused, ReadWrite, ReadWrite, ReadWrite]);
    }
    out
}

/// One assembled shader variant as [`shader_variants`] exports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShaderVariant {
    /// A file name for it: kernel, variant and settings, e.g.
    /// `fused-backward-checks-boxes-sg-wg256-g2`.
    pub stem: String,
    /// The kernel file and its defines, as pipeline labels show it.
    pub name: String,
    /// The compute entry point.
    pub entry_point: String,
    /// The WGSL source (the files assembled, `#ifdef` blocks resolved).
    pub source: String,
    /// The `override` values its pipeline is made with.
    pub constants: Vec<(String, f64)>,
    /// The device features it needs (`"subgroups"` where it reduces with subgroup
    /// operations; none otherwise).
    pub features: Vec<String>,
    /// Its bind group 0, binding by binding: `"uniform"`, `"read-only-storage"`,
    /// `"storage"`, or `None` for a number the variant leaves out.
    pub bindings: Vec<Option<String>>,
}

impl ShaderVariant {
    /// The source as a browser's WebGPU takes it: subgroup variants start with
    /// `enable subgroups;`, which WGSL requires and Tint enforces, while naga 30
    /// (and so wgpu) rejects the directive and takes the builtins on
    /// `Features::SUBGROUP` alone. Other variants are unchanged.
    pub fn webgpu_source(&self) -> String {
        if self.features.iter().any(|f| f == "subgroups") {
            format!("enable subgroups;\n{}", self.source)
        } else {
            self.source.clone()
        }
    }
}

/// Every shader variant the engine may build with `workgroup_size` threads per
/// workgroup (`WG`): each kernel in each combination of defines, with and without
/// subgroups, with γ = 2 folded and general. The same sources the engine hands to
/// wgpu, for other toolchains (naga's writers, a browser's WebGPU, offline
/// compilers). `workgroup_size` must be a power of two.
pub fn shader_variants(workgroup_size: u32) -> Result<Vec<ShaderVariant>, String> {
    if !workgroup_size.is_power_of_two() {
        return Err(format!(
            "workgroup size {workgroup_size} is not a power of two"
        ));
    }
    let mut out = Vec::new();
    for subgroups in [false, true] {
        for gamma_is_two in [true, false] {
            let spec = Spec {
                gamma_is_two,
                workgroup_size,
                subgroups,
            };
            for kernel in Kernel::all() {
                let s = kernel.source(spec)?;
                // A kernel that neither reduces with subgroups nor reads γ is the
                // same under several specs: export it once.
                if out
                    .iter()
                    .any(|v: &ShaderVariant| v.source == s.source && same_constants(v, &s))
                {
                    continue;
                }
                out.push(kernel.variant_of(spec, s));
            }
        }
    }
    Ok(out)
}

fn same_constants(v: &ShaderVariant, s: &ShaderSource) -> bool {
    v.constants.len() == s.constants.len()
        && v.constants
            .iter()
            .zip(&s.constants)
            .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
}

/// Resolves `#ifdef`/`#ifndef`/`#else`/`#endif` lines (nestable) of `file` for the
/// defined names. A directive error names the file and line.
pub(crate) fn preprocess(file: File, defines: &[&str]) -> Result<String, String> {
    // Each open block: (this branch active, parent active, line it opened on).
    let mut stack: Vec<(bool, bool, usize)> = Vec::new();
    let mut out = String::with_capacity(file.text.len());
    let at = |n: usize| format!("{}:{}", file.name, n + 1);
    for (n, line) in file.text.lines().enumerate() {
        let t = line.trim();
        let active = stack.last().is_none_or(|&(a, _, _)| a);
        if let Some(name) = t.strip_prefix("#ifdef ") {
            stack.push((active && defines.contains(&name.trim()), active, n));
        } else if let Some(name) = t.strip_prefix("#ifndef ") {
            stack.push((active && !defines.contains(&name.trim()), active, n));
        } else if t == "#else" {
            let (a, parent, _) = stack
                .pop()
                .ok_or_else(|| format!("{}: #else without #ifdef", at(n)))?;
            stack.push((parent && !a, parent, n));
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| format!("{}: #endif without #ifdef", at(n)))?;
        } else if t.starts_with('#') {
            return Err(format!("{}: unknown directive '{t}'", at(n)));
        } else if active {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(&(_, _, n)) = stack.last() {
        return Err(format!(
            "{}: #ifdef block left open at the end of the file",
            at(n)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gamma_is_two: bool, subgroups: bool) -> Spec {
        Spec {
            gamma_is_two,
            workgroup_size: WORKGROUP_SIZE,
            subgroups,
        }
    }

    fn file(text: &'static str) -> File {
        File {
            name: "test.wgsl",
            text,
        }
    }

    #[test]
    fn preprocessor_resolves_nested_blocks() {
        let src = file("a\n#ifdef X\nb\n#ifdef Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n");
        assert_eq!(preprocess(src, &[]).unwrap(), "a\ne\nf\n");
        assert_eq!(preprocess(src, &["X"]).unwrap(), "a\nb\nd\nf\n");
        assert_eq!(preprocess(src, &["X", "Y"]).unwrap(), "a\nb\nc\nf\n");
        assert_eq!(
            preprocess(file("#ifndef X\na\n#endif\n"), &[]).unwrap(),
            "a\n"
        );
    }

    #[test]
    fn unbalanced_directives_name_the_file_and_line() {
        let e = preprocess(file("a\n#ifdef X\nb\n"), &[]).unwrap_err();
        assert!(e.contains("test.wgsl:2") && e.contains("left open"), "{e}");
        let e = preprocess(file("a\nb\n#endif\n"), &[]).unwrap_err();
        assert!(e.contains("test.wgsl:3") && e.contains("#endif"), "{e}");
        let e = preprocess(file("#else\n"), &[]).unwrap_err();
        assert!(e.contains("test.wgsl:1"), "{e}");
        let e = preprocess(file("x\n#include y\n"), &[]).unwrap_err();
        assert!(
            e.contains("test.wgsl:2") && e.contains("unknown directive"),
            "{e}"
        );
    }

    #[test]
    fn defines_follow_the_rule() {
        // Only BACKWARD (bindings) and SUBGROUPS (builtins) are defines; everything
        // else is an override constant.
        for kernel in Kernel::all() {
            for s in [spec(true, false), spec(false, true)] {
                for d in kernel.defines(s) {
                    let bindings = ["BACKWARD", "SUBGROUPS", "BOXES", "TARGETS", "HALF"];
                    assert!(bindings.contains(&d), "{kernel:?}: {d}");
                }
            }
        }
        let fused = Kernel::Fused {
            backward: true,
            checks: true,
            boxes: false,
            heads: Dtype::F32,
        };
        assert_eq!(fused.defines(spec(true, true)), ["BACKWARD", "SUBGROUPS"]);
        assert_eq!(fused.storage_buffers(), 10);
        let names: Vec<&str> = fused
            .constants(spec(true, true))
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, ["WG", "GAMMA_IS_TWO", "CHECKS"]);
        assert_eq!(Kernel::Count.defines(spec(true, true)), Vec::<&str>::new());
        let half = Kernel::Fused {
            backward: true,
            checks: true,
            boxes: false,
            heads: Dtype::Bf16,
        };
        assert_eq!(half.defines(spec(true, false)), ["BACKWARD", "HALF"]);
        assert_eq!(
            half.constants(spec(true, false)).last(),
            Some(&("HEADS_BF16", 1.0))
        );
    }

    #[test]
    fn every_file_has_balanced_directives() {
        #[allow(unused_mut)]
        let mut files = vec![
            COMMON,
            REDUCE,
            SEGMENT,
            FUSED,
            FINALIZE,
            COUNT,
            NORM,
            COPY_WORDS,
            BOX_TILES,
            CULL,
            ASSIGN,
            COUNT_BOXES,
            SUM_COUNTS,
            PACK_HALF,
        ];
        #[cfg(feature = "bench")]
        files.push(ROOFLINE);
        for f in files {
            for defines in [
                &[][..],
                &["BACKWARD", "SUBGROUPS", "BOXES", "TARGETS", "HALF"][..],
            ] {
                preprocess(f, defines).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
