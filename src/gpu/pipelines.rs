//! Bind group layouts and compute pipelines, made once per engine.

use crate::gpu::shaders::{self, FusedVariant, ShaderSource};

/// A pipeline and the layout of its one bind group.
#[derive(Debug)]
pub struct Kernel {
    /// Layout of bind group 0.
    pub layout: wgpu::BindGroupLayout,
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
}

/// Every kernel of the engine.
#[derive(Debug)]
pub struct Pipelines {
    /// The fused forward pass.
    pub forward: Kernel,
    /// The fused forward pass with on-device input checks.
    pub forward_checked: Kernel,
    /// The fused forward + backward pass (built on devices with enough storage bindings).
    pub backward: Option<Kernel>,
    /// The fused forward + backward pass with on-device input checks.
    pub backward_checked: Option<Kernel>,
    /// The roofline kernel: the forward pass's reads without its maths.
    pub roofline: Kernel,
    /// The roofline of the checked forward pass (which reads every input element).
    pub roofline_checked: Kernel,
    /// The backward pass's roofline: its reads and gradient writes without the maths
    /// (built where the backward pass is).
    pub backward_roofline: Option<Kernel>,
    /// The roofline of the checked backward pass.
    pub backward_roofline_checked: Option<Kernel>,
    /// The per-image finalize reduce.
    pub finalize: Kernel,
    /// The per-image positive count.
    pub count: Kernel,
    /// The raw word copy (error path of the on-device checks).
    pub copy_words: Kernel,
}

/// Kinds of binding, in binding order after the uniform params at binding 0.
#[derive(Debug, Clone, Copy)]
enum B {
    Read,
    Write,
}

/// The pipeline constants every kernel with `common.wgsl` is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// γ = 2: the focal factor is a square, decided at compile time.
    pub gamma_is_two: bool,
    /// Threads per workgroup (`WG`), a power of two.
    pub workgroup_size: u32,
    /// Reduce with subgroup operations (needs `Features::SUBGROUP`).
    pub subgroups: bool,
}

/// Storage buffers the backward pass binds.
pub const BACKWARD_STORAGE_BUFFERS: u32 = 11;

fn kernel(device: &wgpu::Device, shader: &ShaderSource, bindings: &[B], spec: Spec) -> Kernel {
    build(
        device,
        shader,
        bindings,
        true,
        &[
            ("GAMMA_IS_TWO", f64::from(u8::from(spec.gamma_is_two))),
            ("WG", f64::from(spec.workgroup_size)),
        ],
    )
}

/// A kernel whose bindings start at 0 with no params uniform: `src` (read), `dst` (write).
fn kernel_without_params(device: &wgpu::Device, shader: &ShaderSource) -> Kernel {
    build(device, shader, &[B::Read, B::Write], false, &[])
}

fn build(
    device: &wgpu::Device,
    shader: &ShaderSource,
    bindings: &[B],
    with_params: bool,
    constants: &[(&str, f64)],
) -> Kernel {
    let entry = |binding: u32, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let first = u32::from(with_params);
    let mut entries = Vec::new();
    if with_params {
        entries.push(entry(0, wgpu::BufferBindingType::Uniform));
    }
    for (i, b) in bindings.iter().enumerate() {
        let read_only = matches!(b, B::Read);
        entries.push(entry(
            first + i as u32,
            wgpu::BufferBindingType::Storage { read_only },
        ));
    }
    let label = shader.name.as_str();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(shader.source.as_str().into()),
    };
    let module = device.create_shader_module(desc);
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
            constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Kernel { layout, pipeline }
}

impl Pipelines {
    /// Builds every pipeline the device supports (call inside an error scope), for
    /// the constants of `spec`.
    pub fn new(device: &wgpu::Device, spec: Spec) -> Self {
        use B::{Read, Write};
        let forward_bindings = [Read, Read, Read, Read, Read, Read, Write];
        let backward_bindings = [
            Read, Read, Read, Read, Read, Read, Write, Read, Write, Write, Write,
        ];
        let can_backward =
            device.limits().max_storage_buffers_per_shader_stage >= BACKWARD_STORAGE_BUFFERS;
        let backward = |variant, checks| {
            can_backward.then(|| {
                kernel(
                    device,
                    &shaders::fused(variant, checks, spec.subgroups),
                    &backward_bindings,
                    spec,
                )
            })
        };
        let forward = |variant, checks| {
            kernel(
                device,
                &shaders::fused(variant, checks, spec.subgroups),
                &forward_bindings,
                spec,
            )
        };
        Pipelines {
            forward: forward(FusedVariant::Forward, false),
            forward_checked: forward(FusedVariant::Forward, true),
            backward: backward(FusedVariant::Backward, false),
            backward_checked: backward(FusedVariant::Backward, true),
            roofline: forward(FusedVariant::Roofline, false),
            roofline_checked: forward(FusedVariant::Roofline, true),
            backward_roofline: backward(FusedVariant::BackwardRoofline, false),
            backward_roofline_checked: backward(FusedVariant::BackwardRoofline, true),
            finalize: kernel(device, &shaders::finalize(), &[Read, Write], spec),
            count: kernel(device, &shaders::count(), &[Read, Write], spec),
            copy_words: kernel_without_params(device, &shaders::copy_words()),
        }
    }
}
