//! The WGSL sources, assembled: `common.wgsl` (parameters and numerics) in front of
//! each kernel file, since WGSL has no `#include`.

/// Threads per workgroup of the reduction kernels (`WG` in `shaders/common.wgsl`).
pub const WORKGROUP_SIZE: u32 = 256;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const FUSED: &str = include_str!("../../shaders/fused.wgsl");
const FINALIZE: &str = include_str!("../../shaders/finalize.wgsl");

/// One assembled shader: its name, entry point and full source.
#[derive(Debug, Clone)]
pub struct ShaderSource {
    /// File name of the kernel part, for labels and messages.
    pub name: &'static str,
    /// The compute entry point.
    pub entry_point: &'static str,
    /// `common.wgsl` followed by the kernel file.
    pub source: String,
}

fn assemble(name: &'static str, entry_point: &'static str, body: &str) -> ShaderSource {
    ShaderSource {
        name,
        entry_point,
        source: format!("{COMMON}\n{body}"),
    }
}

/// The fused forward pass (`shaders/fused.wgsl`).
pub fn fused() -> ShaderSource {
    assemble("fused.wgsl", "fused", FUSED)
}

/// The per-image finalize reduce (`shaders/finalize.wgsl`).
pub fn finalize() -> ShaderSource {
    assemble("finalize.wgsl", "finalize", FINALIZE)
}

/// Every shader the engine builds.
pub fn all() -> Vec<ShaderSource> {
    vec![fused(), finalize()]
}

/// Parses and validates a shader with naga, as wgpu would, without a GPU.
pub fn validate(shader: &ShaderSource) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(&shader.source)
        .map_err(|e| format!("{}: {}", shader.name, e.emit_to_string(&shader.source)))?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    );
    validator
        .validate(&module)
        .map_err(|e| format!("{}: {}", shader.name, e.emit_to_string(&shader.source)))?;
    Ok(module)
}
