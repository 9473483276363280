//! The WGSL kernels without a GPU (CPU-only unit tests): every variant the engine
//! may build is assembled, validated by naga, validated again with its override
//! values applied, and its bindings and entry point are the ones the engine makes
//! pipelines for; a broken source fails; the Rust mirrors of the WGSL structs and
//! constants agree with what naga lays out.

use std::mem::{offset_of, size_of};

use crate::gpu::params::{Count, ImageSums, Params, PARTIAL_BYTES};
use crate::gpu::shaders::{Binding, Kernel, ShaderSource, Spec, WORKGROUP_SIZE};

fn validator() -> naga::valid::Validator {
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP,
    );
    v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(
            naga::valid::SubgroupOperationSet::BASIC
                | naga::valid::SubgroupOperationSet::ARITHMETIC,
        );
    v
}

/// Parses and validates a shader as wgpu would, then applies its override values
/// (as pipeline creation does) and validates the result.
fn validate(shader: &ShaderSource) -> Result<naga::Module, String> {
    let fail = |e: String| format!("{}: {e}", shader.name);
    let module = naga::front::wgsl::parse_str(&shader.source)
        .map_err(|e| fail(e.emit_to_string(&shader.source)))?;
    let info = validator()
        .validate(&module)
        .map_err(|e| fail(e.emit_to_string(&shader.source)))?;
    let constants: naga::back::PipelineConstants = shader
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let (resolved, _) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, shader.entry_point)),
        &constants,
    )
    .map_err(|e| {
        let detail = match &e {
            naga::back::pipeline_constants::PipelineConstantError::ValidationError(v) => {
                format!("{:?}", v.as_inner())
            }
            other => other.to_string(),
        };
        fail(format!("override values {constants:?}: {detail}"))
    })?;
    validator()
        .validate(&resolved)
        .map_err(|e| fail(format!("with override values {constants:?}: {e:?}")))?;
    Ok(module)
}

/// Every setting of the engine's pipeline constants.
fn specs() -> Vec<Spec> {
    let mut out = Vec::new();
    for subgroups in [false, true] {
        for gamma_is_two in [false, true] {
            for workgroup_size in [32, WORKGROUP_SIZE, 1024] {
                out.push(Spec {
                    gamma_is_two,
                    workgroup_size,
                    subgroups,
                });
            }
        }
    }
    out
}

/// Every variant under every spec with its override values applied, as a pipeline
/// makes it, and its validation info: what the backend writers take.
pub(super) fn resolved_modules() -> Vec<(
    Kernel,
    Spec,
    ShaderSource,
    naga::Module,
    naga::valid::ModuleInfo,
)> {
    let mut out = Vec::new();
    for spec in specs() {
        for kernel in Kernel::all() {
            let s = kernel.source(spec).unwrap_or_else(|e| panic!("{e}"));
            let module = validate(&s).unwrap_or_else(|e| panic!("does not validate:\n{e}"));
            let info = validator()
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {e:?}", s.name));
            let constants: naga::back::PipelineConstants = s
                .constants
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let (resolved, info) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, s.entry_point)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            out.push((kernel, spec, s, resolved.into_owned(), info.into_owned()));
        }
    }
    out
}

fn modules() -> Vec<(Kernel, ShaderSource, naga::Module)> {
    let mut out = Vec::new();
    for spec in specs() {
        for kernel in Kernel::all() {
            let s = kernel.source(spec).unwrap_or_else(|e| panic!("{e}"));
            let m = validate(&s).unwrap_or_else(|e| panic!("does not validate:\n{e}"));
            out.push((kernel, s, m));
        }
    }
    out
}

#[test]
fn every_variant_validates_with_its_overrides_and_bindings() {
    let all = modules();
    assert!(all.len() >= 12 * 7, "{} variants", all.len());
    for (kernel, s, m) in &all {
        let ep = m
            .entry_points
            .iter()
            .find(|e| e.name == s.entry_point)
            .unwrap_or_else(|| panic!("{}: no entry point '{}'", s.name, s.entry_point));
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{}", s.name);
        // Bind group 0 as the engine lays it out: binding n of the right kind.
        let mut globals: Vec<(u32, Binding)> = m
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let b = g.binding.as_ref()?;
                assert_eq!(b.group, 0, "{}", s.name);
                let kind = match g.space {
                    naga::AddressSpace::Uniform => Binding::Uniform,
                    naga::AddressSpace::Storage { access } => {
                        if access.contains(naga::StorageAccess::STORE) {
                            Binding::ReadWrite
                        } else {
                            Binding::Read
                        }
                    }
                    other => panic!("{}: binding in {other:?}", s.name),
                };
                Some((b.binding, kind))
            })
            .collect();
        globals.sort_by_key(|g| g.0);
        let want: Vec<(u32, Binding)> = kernel
            .bindings()
            .into_iter()
            .enumerate()
            .filter(|(_, b)| *b != Binding::Unused)
            .map(|(i, b)| (i as u32, b))
            .collect();
        assert_eq!(globals, want, "{}: bindings", s.name);
        if *kernel == Kernel::CopyWords {
            assert_eq!(ep.workgroup_size, [256, 1, 1], "{}", s.name);
            continue;
        }
        // @workgroup_size(WG): x comes from the WG override, y and z are 1.
        let x = ep.workgroup_size_overrides.as_ref().and_then(|o| o[0]);
        let x = x.unwrap_or_else(|| panic!("{}: workgroup size x is not the WG override", s.name));
        match &m.global_expressions[x] {
            naga::Expression::Override(h) => {
                assert_eq!(m.overrides[*h].name.as_deref(), Some("WG"), "{}", s.name)
            }
            other => panic!("{}: workgroup size x is {other:?}", s.name),
        }
        assert_eq!(&ep.workgroup_size[1..], &[1, 1], "{}", s.name);
    }
}

#[test]
fn broken_wgsl_fails_validation() {
    let broken = [
        // Syntax error.
        "fn main( { let x = ; }",
        // Type error.
        "fn f() -> u32 { return 1.5; }",
        // Unknown identifier.
        "@compute @workgroup_size(1) fn main() { let x = undefined_thing; }",
        // A runtime-sized array in a uniform buffer (rejected by the validator).
        "struct S { a: array<f32> }\n@group(0) @binding(0) var<uniform> u: S;\n\
         @compute @workgroup_size(1) fn main() { let x = u.a[0]; }",
    ];
    for src in broken {
        let s = ShaderSource {
            name: "broken.wgsl".to_string(),
            entry_point: "main",
            source: src.to_string(),
            constants: vec![],
        };
        match validate(&s) {
            Ok(_) => panic!("broken WGSL validated:\n{src}"),
            Err(e) => assert!(
                e.contains("broken.wgsl"),
                "message does not name the file: {e}"
            ),
        }
    }
    let spec = specs()[0];
    for kernel in Kernel::all() {
        let s = kernel.source(spec).unwrap();
        // A kernel with one character dropped from its source fails.
        let cut = s.source.rfind('}').unwrap();
        let mut bad = s.clone();
        bad.source.remove(cut);
        assert!(
            validate(&bad).is_err(),
            "{} still validates without its last '}}'",
            s.name
        );
        // So does one built with an override it does not declare.
        let mut bad = s.clone();
        bad.constants.push(("NOT_AN_OVERRIDE", 1.0));
        assert!(
            validate(&bad).is_err(),
            "{} takes an unknown override",
            s.name
        );
    }
}

/// A struct member: name, offset and size in bytes.
type Member = (String, u32, u32);

/// `(span, members)` of the struct type `name` in `module`.
fn naga_struct(module: &naga::Module, name: &str) -> Option<(u32, Vec<Member>)> {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))?;
    match &ty.inner {
        naga::TypeInner::Struct { members, span } => Some((
            *span,
            members
                .iter()
                .map(|m| {
                    (
                        m.name.clone().unwrap_or_default(),
                        m.offset,
                        module.types[m.ty].inner.size(module.to_ctx()),
                    )
                })
                .collect(),
        )),
        other => panic!("{name} is not a struct: {other:?}"),
    }
}

fn check_layout(
    module: &naga::Module,
    shader: &str,
    name: &str,
    rust_size: usize,
    rust: &[(&str, usize, usize)],
) {
    let (span, members) =
        naga_struct(module, name).unwrap_or_else(|| panic!("{shader}: no struct named {name}"));
    assert_eq!(
        span as usize, rust_size,
        "{shader}: size of {name}: naga {span}, Rust {rust_size}"
    );
    let naga_names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let rust_names: Vec<&str> = rust.iter().map(|m| m.0).collect();
    assert_eq!(naga_names, rust_names, "{shader}: fields of {name}");
    for ((n, off, size), (_, r_off, r_size)) in members.iter().zip(rust) {
        assert_eq!(*off as usize, *r_off, "{shader}: offset of {name}.{n}");
        assert_eq!(*size as usize, *r_size, "{shader}: size of {name}.{n}");
    }
}

/// `[(field name, offset, size)]` of a Rust struct, in the order given.
macro_rules! fields {
    ($t:ty { $($f:ident),* $(,)? }) => {
        vec![$((stringify!($f), offset_of!($t, $f), size_of_field(|x: &$t| &x.$f))),*]
    };
}

fn size_of_field<T, F>(_: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The modules assembled with `common.wgsl` (all but the stand-alone word copy).
fn common_modules() -> Vec<(Kernel, ShaderSource, naga::Module)> {
    modules()
        .into_iter()
        .filter(|(k, _, _)| *k != Kernel::CopyWords)
        .collect()
}

#[test]
fn params_matches_the_wgsl_struct() {
    let rust = fields!(Params {
        batch,
        classes,
        positions,
        level_offset,
        level_size,
        image0,
        tiles,
        chunks,
        classes_per_chunk,
        partials_per_image,
        slot_base,
        reg_mode,
        cls_base,
        cnt_base,
        reg_base,
        tgt_base,
        reg_tgt_base,
        norm_mode,
        gamma,
        alpha,
        w_cls,
        w_cnt,
        w_reg,
        ctr_weighted,
        boxes_per_image,
        level_width,
        stride,
        range_lo,
        range_hi,
        near,
        assign_rule,
        class_f32,
        scale_base,
        grad_cls_base,
        grad_cnt_base,
        grad_reg_base,
        pack_src_base,
        pack_dst_base,
        pack_count,
    });
    for (_, s, m) in common_modules() {
        check_layout(&m, &s.name, "Params", size_of::<Params>(), &rust);
        let (span, _) = naga_struct(&m, "Partial").expect("Partial");
        assert_eq!(span as u64, PARTIAL_BYTES, "{}: size of Partial", s.name);
    }
}

#[test]
fn image_sums_and_count_match_the_wgsl_structs() {
    let rust = fields!(ImageSums {
        cls,
        cnt,
        reg,
        reg_w,
        ctr,
        num_pos,
        flags,
        _pad0
    });
    let all = modules();
    let (_, s, m) = all
        .iter()
        .find(|(k, _, _)| *k == Kernel::Finalize)
        .expect("finalize.wgsl");
    check_layout(m, &s.name, "ImageSums", size_of::<ImageSums>(), &rust);
    let rust = fields!(Count { num_pos, ctr });
    for (_, s, m) in all.iter().filter(|(k, _, _)| *k != Kernel::CopyWords) {
        check_layout(m, &s.name, "Count", size_of::<Count>(), &rust);
    }
}

#[test]
fn workgroup_size_matches_wg() {
    for (_, s, m) in common_modules() {
        let (_, o) = m
            .overrides
            .iter()
            .find(|(_, o)| o.name.as_deref() == Some("WG"))
            .unwrap_or_else(|| panic!("{}: no override WG", s.name));
        let init = o
            .init
            .unwrap_or_else(|| panic!("{}: WG has no default", s.name));
        match m.global_expressions[init] {
            naga::Expression::Literal(naga::Literal::U32(wg)) => {
                assert_eq!(wg, WORKGROUP_SIZE, "{}: WG = {wg}", s.name)
            }
            ref other => panic!("{}: WG is not a u32 literal: {other:?}", s.name),
        }
    }
}
