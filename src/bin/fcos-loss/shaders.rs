//! `fcos-loss shaders --out DIR`: every shader variant the engine may build, as
//! WGSL files and a manifest, for other toolchains (a browser's WebGPU, naga's
//! writers, offline compilers). Subgroup variants also get a `.webgpu.wgsl` file
//! that starts with `enable subgroups;` (WebGPU requires it, naga rejects it).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use fcos_loss::{shader_variants, FcosError, WORKGROUP_SIZE};

use crate::common::Failure;

#[derive(clap::Args, Debug)]
pub struct ShadersArgs {
    /// Folder to write `<stem>.wgsl` and `manifest.json` into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Threads per workgroup (the `WG` override), a power of two.
    #[arg(long, default_value_t = WORKGROUP_SIZE)]
    workgroup_size: u32,
}

pub fn run(a: &ShadersArgs) -> Result<(), Failure> {
    let variants = shader_variants(a.workgroup_size).map_err(FcosError::InvalidConfig)?;
    let io = |what: &str, e: std::io::Error| FcosError::File(format!("{what}: {e}"));
    std::fs::create_dir_all(&a.out).map_err(|e| io(&a.out.display().to_string(), e))?;
    let mut entries = Vec::with_capacity(variants.len());
    for v in &variants {
        let file = format!("{}.wgsl", v.stem);
        let path = a.out.join(&file);
        std::fs::write(&path, &v.source).map_err(|e| io(&path.display().to_string(), e))?;
        // The browser's dialect differs only by `enable subgroups;`.
        let webgpu = v.webgpu_source();
        let webgpu_file = if webgpu == v.source {
            file.clone()
        } else {
            let name = format!("{}.webgpu.wgsl", v.stem);
            let path = a.out.join(&name);
            std::fs::write(&path, &webgpu).map_err(|e| io(&path.display().to_string(), e))?;
            name
        };
        let constants: Map<String, Value> = v
            .constants
            .iter()
            .map(|(k, x)| (k.clone(), json!(x)))
            .collect();
        entries.push(json!({
            "stem": v.stem,
            "name": v.name,
            "file": file,
            "webgpu_file": webgpu_file,
            "entry_point": v.entry_point,
            "constants": constants,
            "features": v.features,
            "bindings": v.bindings,
        }));
    }
    let manifest = json!({
        "crate": env!("CARGO_PKG_VERSION"),
        "workgroup_size": a.workgroup_size,
        "variants": entries,
    });
    let path = a.out.join("manifest.json");
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| FcosError::File(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| io(&path.display().to_string(), e))?;
    println!(
        "wrote {} shader variants and manifest.json to {}",
        variants.len(),
        a.out.display()
    );
    Ok(())
}
