//! Every kernel variant through naga's backend writers, without a GPU (CPU-only
//! unit tests): SPIR-V (Vulkan), MSL (Metal), HLSL (DX12), GLSL ES 3.1 and desktop
//! GLSL 4.3 (GL). Each variant is taken with its override values applied, as a
//! pipeline would make it; a writer's error fails the test with the variant and
//! the backend. Every combination translates today, subgroup variants included
//! (GLSL through the `GL_KHR_shader_subgroup` extensions, which wgpu's GL backend
//! does not use: it never offers `Features::SUBGROUP`).

use crate::gpu::shader_checks::resolved_modules;

/// A backend writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    SpirV,
    Msl,
    Hlsl,
    GlslEs,
    GlslDesktop,
}

const BACKENDS: [Backend; 5] = [
    Backend::SpirV,
    Backend::Msl,
    Backend::Hlsl,
    Backend::GlslEs,
    Backend::GlslDesktop,
];

fn write(
    backend: Backend,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<usize, String> {
    let stage = naga::ShaderStage::Compute;
    match backend {
        Backend::SpirV => {
            let options = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            let pipeline = naga::back::spv::PipelineOptions {
                shader_stage: stage,
                entry_point: entry.to_string(),
            };
            naga::back::spv::write_vec(module, info, &options, Some(&pipeline))
                .map(|w| w.len() * 4)
                .map_err(|e| e.to_string())
        }
        Backend::Msl => {
            let options = naga::back::msl::Options {
                lang_version: (2, 4),
                fake_missing_bindings: true,
                ..Default::default()
            };
            let pipeline = naga::back::msl::PipelineOptions {
                entry_point: Some((stage, entry.to_string())),
                ..Default::default()
            };
            naga::back::msl::write_string(module, info, &options, &pipeline)
                .map(|(s, _)| s.len())
                .map_err(|e| e.to_string())
        }
        Backend::Hlsl => {
            let options = naga::back::hlsl::Options {
                shader_model: naga::back::hlsl::ShaderModel::V6_0,
                fake_missing_bindings: true,
                ..Default::default()
            };
            let pipeline = naga::back::hlsl::PipelineOptions {
                entry_point: Some((stage, entry.to_string())),
            };
            let mut out = String::new();
            let mut w = naga::back::hlsl::Writer::new(&mut out, &options, &pipeline);
            w.write(module, info, None)
                .map(|_| out.len())
                .map_err(|e| e.to_string())
        }
        Backend::GlslEs | Backend::GlslDesktop => {
            let version = if backend == Backend::GlslEs {
                naga::back::glsl::Version::new_gles(310)
            } else {
                naga::back::glsl::Version::Desktop(430)
            };
            let options = naga::back::glsl::Options {
                version,
                ..Default::default()
            };
            let pipeline = naga::back::glsl::PipelineOptions {
                shader_stage: stage,
                entry_point: entry.to_string(),
                multiview: None,
            };
            let mut out = String::new();
            let mut w = naga::back::glsl::Writer::new(
                &mut out,
                module,
                info,
                &options,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .map_err(|e| e.to_string())?;
            w.write().map_err(|e| e.to_string())?;
            Ok(out.len())
        }
    }
}

#[test]
fn every_variant_translates_for_every_backend() {
    let all = resolved_modules();
    assert!(all.len() >= 12 * 7, "{} variants", all.len());
    let mut failures = Vec::new();
    let mut written = 0usize;
    for (_, spec, shader, module, info) in &all {
        for backend in BACKENDS {
            match write(backend, module, info, shader.entry_point) {
                Ok(bytes) => {
                    assert!(bytes > 0, "{} {backend:?}: empty output", shader.name);
                    written += 1;
                }
                Err(e) => failures.push(format!(
                    "{} (WG {}) {backend:?}: {e}",
                    shader.name, spec.workgroup_size
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} translations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(written, all.len() * BACKENDS.len());
}
