//! The WGSL sources without a GPU: they validate with naga, a broken one does not,
//! and the Rust mirrors of their structs and constants agree with what naga lays out.

use std::mem::{offset_of, size_of};

use fcos_loss::gpu::params::{ImageLoss, Params, PARTIAL_BYTES};
use fcos_loss::gpu::shaders::{self, ShaderSource};

/// The shaders assembled with `common.wgsl` (all but the stand-alone word copy).
fn common_modules() -> Vec<(ShaderSource, naga::Module)> {
    modules()
        .into_iter()
        .filter(|(s, _)| s.name != "copy_words.wgsl")
        .collect()
}

fn modules() -> Vec<(ShaderSource, naga::Module)> {
    shaders::all()
        .into_iter()
        .map(|s| {
            let m = shaders::validate(&s)
                .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", s.name));
            (s, m)
        })
        .collect()
}

#[test]
fn every_shader_validates_and_has_its_entry_point() {
    let all = modules();
    let names: Vec<&str> = all.iter().map(|(s, _)| s.name.as_str()).collect();
    assert!(
        names.contains(&"fused.wgsl")
            && names.contains(&"fused.wgsl [BACKWARD]")
            && names.contains(&"fused.wgsl [ROOFLINE]")
            && names.contains(&"finalize.wgsl")
            && names.contains(&"count.wgsl"),
        "{names:?}"
    );
    for (s, m) in &all {
        let ep = m
            .entry_points
            .iter()
            .find(|e| e.name == s.entry_point)
            .unwrap_or_else(|| panic!("{}: no entry point '{}'", s.name, s.entry_point));
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{}", s.name);
        if s.name == "copy_words.wgsl" {
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
        };
        match shaders::validate(&s) {
            Ok(_) => panic!("broken WGSL validated:\n{src}"),
            Err(e) => assert!(
                e.contains("broken.wgsl"),
                "message does not name the file: {e}"
            ),
        }
    }
    // A kernel with one character dropped from its source fails too.
    for s in shaders::all() {
        let cut = s.source.rfind('}').unwrap();
        let mut bad = s.clone();
        bad.source.remove(cut);
        assert!(
            shaders::validate(&bad).is_err(),
            "{} still validates without its last '}}'",
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
        _pad0,
        gamma,
        alpha,
        w_cls,
        w_cnt,
        w_reg,
        _pad1,
    });
    for (s, m) in common_modules() {
        check_layout(&m, &s.name, "Params", size_of::<Params>(), &rust);
        let (span, _) = naga_struct(&m, "Partial").expect("Partial");
        assert_eq!(span as u64, PARTIAL_BYTES, "{}: size of Partial", s.name);
    }
}

#[test]
fn image_loss_matches_the_wgsl_struct() {
    let rust = fields!(ImageLoss {
        cls,
        cnt,
        reg,
        num_pos,
        flags,
        _pad0,
        _pad1,
        _pad2
    });
    let all = modules();
    let (s, m) = all
        .iter()
        .find(|(s, _)| s.name == "finalize.wgsl")
        .expect("finalize.wgsl");
    check_layout(m, &s.name, "ImageLoss", size_of::<ImageLoss>(), &rust);
}

#[test]
fn workgroup_size_matches_wg() {
    for (s, m) in common_modules() {
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
                assert_eq!(wg, shaders::WORKGROUP_SIZE, "{}: WG = {wg}", s.name)
            }
            ref other => panic!("{}: WG is not a u32 literal: {other:?}", s.name),
        }
    }
}
