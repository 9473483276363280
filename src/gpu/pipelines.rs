//! Compute pipelines, built lazily: each kernel variant on its first use, then
//! kept for the engine's life (or until a setting that changes the pipeline
//! constants replaces the cache).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::FcosError;
use crate::gpu::scope::scoped;
use crate::gpu::shaders::{Binding, Kernel, Spec};

/// A pipeline and the layout of its one bind group.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// Layout of bind group 0.
    pub layout: wgpu::BindGroupLayout,
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// The kernel and the constants it was built with (its shader variant).
    pub kernel: Kernel,
    pub spec: Spec,
}

/// The pipelines built so far for one [`Spec`].
#[derive(Debug)]
pub(crate) struct Pipelines {
    spec: Spec,
    built: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
}

impl Pipelines {
    /// An empty cache for the pipeline constants of `spec`.
    pub fn new(spec: Spec) -> Self {
        Pipelines {
            spec,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The constants every pipeline here is built with.
    pub fn spec(&self) -> Spec {
        self.spec
    }

    /// The pipeline of `kernel`, built on first use inside error scopes. A kernel
    /// that binds more storage buffers than the device allows is a
    /// [`FcosError::Limit`].
    pub fn get(&self, device: &wgpu::Device, kernel: Kernel) -> Result<Arc<Pipeline>, FcosError> {
        // A lock poisoned by a panic elsewhere still guards whole entries.
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = built.get(&kernel) {
            return Ok(p.clone());
        }
        let need = kernel.storage_buffers();
        let allowed = device.limits().max_storage_buffers_per_shader_stage;
        if need > allowed {
            return Err(FcosError::Limit(format!(
                "the {kernel:?} pass binds {need} storage buffers; the device allows max_storage_buffers_per_shader_stage = {allowed}"
            )));
        }
        let pipeline = Arc::new(build(device, kernel, self.spec)?);
        built.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }
}

fn build(device: &wgpu::Device, kernel: Kernel, spec: Spec) -> Result<Pipeline, FcosError> {
    let shader = kernel
        .source(spec)
        .map_err(|e| FcosError::gpu(format!("assembling the {kernel:?} shader: {e}")))?;
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let ty = match b {
                Binding::Uniform => wgpu::BufferBindingType::Uniform,
                Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                Binding::Unused => return None,
            };
            Some(wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
        })
        .collect();
    let label = shader.name.as_str();
    scoped(device, || {
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(shader.source.as_str().into()),
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(shader.entry_point),
            // Every kernel writes its workgroup memory before reading it.
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &shader.constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Pipeline {
            layout,
            pipeline,
            kernel,
            spec,
        }
    })
}
