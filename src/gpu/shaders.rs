//! The WGSL sources, assembled: `common.wgsl` (parameters and numerics) in front of
//! each kernel file, with the kernel's `#ifdef NAME` / `#ifndef NAME` / `#else` /
//! `#endif` blocks resolved for the variant at hand (WGSL has neither `#include`
//! nor a preprocessor).

/// Default threads per workgroup of the reduction kernels (the default of the
/// `WG` override in `shaders/common.wgsl`).
pub const WORKGROUP_SIZE: u32 = 256;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const FUSED: &str = include_str!("../../shaders/fused.wgsl");
const FINALIZE: &str = include_str!("../../shaders/finalize.wgsl");
const COUNT: &str = include_str!("../../shaders/count.wgsl");
const COPY_WORDS: &str = include_str!("../../shaders/copy_words.wgsl");

/// One assembled shader: its name, entry point and full source.
#[derive(Debug, Clone)]
pub struct ShaderSource {
    /// Kernel file and variant, for labels and messages.
    pub name: String,
    /// The compute entry point.
    pub entry_point: &'static str,
    /// `common.wgsl` followed by the kernel, preprocessed.
    pub source: String,
}

/// Resolves `#ifdef`/`#ifndef`/`#else`/`#endif` lines (nestable) for the given
/// defined names. Unbalanced directives are an error.
pub fn preprocess(source: &str, defines: &[&str]) -> Result<String, String> {
    // Each open block: (this branch active, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = String::with_capacity(source.len());
    for (n, line) in source.lines().enumerate() {
        let t = line.trim();
        let active = stack.last().is_none_or(|&(a, _)| a);
        if let Some(name) = t.strip_prefix("#ifdef ") {
            stack.push((active && defines.contains(&name.trim()), active));
        } else if let Some(name) = t.strip_prefix("#ifndef ") {
            stack.push((active && !defines.contains(&name.trim()), active));
        } else if t == "#else" {
            let (a, parent) = stack
                .pop()
                .ok_or_else(|| format!("line {}: #else without #ifdef", n + 1))?;
            stack.push((parent && !a, parent));
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| format!("line {}: #endif without #ifdef", n + 1))?;
        } else if t.starts_with('#') {
            return Err(format!("line {}: unknown directive '{t}'", n + 1));
        } else if active {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(format!("{} #ifdef block(s) left open", stack.len()));
    }
    Ok(out)
}

fn assemble(file: &str, entry_point: &'static str, body: &str, defines: &[&str]) -> ShaderSource {
    let name = if defines.is_empty() {
        file.to_string()
    } else {
        format!("{file} [{}]", defines.join(", "))
    };
    // The sources are part of the crate and tested; a directive error is a bug that
    // the naga test reports, so it becomes a WGSL comment naga will choke on.
    let body = preprocess(body, defines).unwrap_or_else(|e| format!("preprocessor error: {e}"));
    ShaderSource {
        name,
        entry_point,
        source: format!("{COMMON}\n{body}"),
    }
}

/// Which computation a fused-pass pipeline performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedVariant {
    /// Losses only.
    Forward,
    /// Losses and gradients.
    Backward,
    /// The same reads as `Forward`, summed without the maths: the memory roofline.
    Roofline,
    /// The same reads and gradient writes as `Backward` without the maths: the
    /// backward pass's memory roofline.
    BackwardRoofline,
}

impl FusedVariant {
    /// Whether the variant writes the gradient buffers (and counts positives first).
    pub fn writes_gradients(self) -> bool {
        matches!(
            self,
            FusedVariant::Backward | FusedVariant::BackwardRoofline
        )
    }

    /// Whether the variant is a roofline (reads and writes only, no maths).
    pub fn is_roofline(self) -> bool {
        matches!(
            self,
            FusedVariant::Roofline | FusedVariant::BackwardRoofline
        )
    }
}

/// The fused pass (`shaders/fused.wgsl`) in one variant, with or without the
/// on-device input checks (for the roofline: with or without the checked pass's
/// extra reads), reducing with the shared-memory tree or with subgroup
/// operations.
pub fn fused(variant: FusedVariant, checks: bool, subgroups: bool) -> ShaderSource {
    let mut defines = match variant {
        FusedVariant::Forward => vec![],
        FusedVariant::Backward => vec!["BACKWARD"],
        FusedVariant::Roofline => vec!["ROOFLINE"],
        FusedVariant::BackwardRoofline => vec!["ROOFLINE", "BACKWARD"],
    };
    if checks {
        // The roofline of the checked pass reads what it reads, without the flags.
        if !variant.is_roofline() {
            defines.push("CHECKS");
        }
        defines.push("READ_ALL");
    }
    if subgroups {
        defines.push("SUBGROUPS");
    }
    assemble("fused.wgsl", "fused", FUSED, &defines)
}

/// The per-image finalize reduce (`shaders/finalize.wgsl`).
pub fn finalize() -> ShaderSource {
    assemble("finalize.wgsl", "finalize", FINALIZE, &[])
}

/// The positive count per image (`shaders/count.wgsl`).
pub fn count() -> ShaderSource {
    assemble("count.wgsl", "count_positives", COUNT, &[])
}

/// The raw word copy (`shaders/copy_words.wgsl`), which stands alone.
pub fn copy_words() -> ShaderSource {
    ShaderSource {
        name: "copy_words.wgsl".to_string(),
        entry_point: "copy_words",
        source: COPY_WORDS.to_string(),
    }
}

/// Every shader the engine builds.
pub fn all() -> Vec<ShaderSource> {
    let mut out = Vec::new();
    for subgroups in [false, true] {
        for checks in [false, true] {
            out.push(fused(FusedVariant::Forward, checks, subgroups));
            out.push(fused(FusedVariant::Backward, checks, subgroups));
            out.push(fused(FusedVariant::Roofline, checks, subgroups));
            out.push(fused(FusedVariant::BackwardRoofline, checks, subgroups));
        }
    }
    out.extend([finalize(), count(), copy_words()]);
    out
}

/// Parses and validates a shader with naga, as wgpu would, without a GPU.
pub fn validate(shader: &ShaderSource) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(&shader.source)
        .map_err(|e| format!("{}: {}", shader.name, e.emit_to_string(&shader.source)))?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP,
    );
    validator
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(
            naga::valid::SubgroupOperationSet::BASIC
                | naga::valid::SubgroupOperationSet::ARITHMETIC,
        );
    validator
        .validate(&module)
        .map_err(|e| format!("{}: {}", shader.name, e.emit_to_string(&shader.source)))?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessor_resolves_nested_blocks() {
        let src = "a\n#ifdef X\nb\n#ifdef Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        assert_eq!(preprocess(src, &[]).unwrap(), "a\ne\nf\n");
        assert_eq!(preprocess(src, &["X"]).unwrap(), "a\nb\nd\nf\n");
        assert_eq!(preprocess(src, &["X", "Y"]).unwrap(), "a\nb\nc\nf\n");
        assert_eq!(preprocess("#ifndef X\na\n#endif\n", &[]).unwrap(), "a\n");
        assert!(preprocess("#ifdef X\n", &[]).is_err());
        assert!(preprocess("#endif\n", &[]).is_err());
        assert!(preprocess("#include x\n", &[]).is_err());
    }

    #[test]
    fn every_shader_validates() {
        for s in all() {
            validate(&s).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
