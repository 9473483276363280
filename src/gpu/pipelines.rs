//! Bind group layouts and compute pipelines, made once per engine.

use crate::gpu::shaders::{self, ShaderSource};

/// The engine's pipelines and their layouts.
#[derive(Debug)]
pub struct Pipelines {
    /// Layout of the fused pass: params, six inputs, partials.
    pub fused_layout: wgpu::BindGroupLayout,
    /// The fused forward pass.
    pub fused: wgpu::ComputePipeline,
    /// Layout of the finalize pass: params, partials, per-image losses.
    pub finalize_layout: wgpu::BindGroupLayout,
    /// The finalize reduce.
    pub finalize: wgpu::ComputePipeline,
}

fn entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// Binding 0 is the uniform params, then `read_only` storage bindings, then `read_write` ones.
fn layout(
    device: &wgpu::Device,
    label: &str,
    read_only: u32,
    read_write: u32,
) -> wgpu::BindGroupLayout {
    let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
    for i in 0..read_only {
        entries.push(entry(
            1 + i,
            wgpu::BufferBindingType::Storage { read_only: true },
        ));
    }
    for i in 0..read_write {
        entries.push(entry(
            1 + read_only + i,
            wgpu::BufferBindingType::Storage { read_only: false },
        ));
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

fn pipeline(
    device: &wgpu::Device,
    shader: &ShaderSource,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(shader.name),
        source: wgpu::ShaderSource::Wgsl(shader.source.as_str().into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(shader.name),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(shader.name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(shader.entry_point),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

impl Pipelines {
    /// Builds every pipeline (call inside an error scope).
    pub fn new(device: &wgpu::Device) -> Self {
        let fused_layout = layout(device, "fcos fused", 6, 1);
        let finalize_layout = layout(device, "fcos finalize", 1, 1);
        Pipelines {
            fused: pipeline(device, &shaders::fused(), &fused_layout),
            finalize: pipeline(device, &shaders::finalize(), &finalize_layout),
            fused_layout,
            finalize_layout,
        }
    }
}
