//! The device the engine runs on: its own (opened with pollster, honouring
//! `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`) or the user's existing `Device` and `Queue`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::FcosError;
use crate::gpu::scope::describe;

/// A device, its queue, and what the engine needs to know about them.
#[derive(Debug, Clone)]
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's description.
    pub info: wgpu::AdapterInfo,
    /// The device's limits (as granted).
    pub limits: wgpu::Limits,
    /// The device's features (as granted).
    pub features: wgpu::Features,
    /// Set by the device-lost callback of a device this crate opened.
    pub(crate) lost: Arc<AtomicBool>,
    /// Errors no error scope caught, on a device this crate opened.
    pub(crate) uncaptured: Arc<Mutex<Option<wgpu::Error>>>,
}

/// `"<adapter name> (<backend>)"`.
pub fn adapter_label(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?})", info.name, info.backend)
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 1,
        _ => 2,
    };
    (kind, backend)
}

impl GpuContext {
    /// Opens a device on the best adapter: discrete before integrated before
    /// software, Vulkan/Metal/DX12 before GL. `WGPU_BACKEND` (e.g. `vulkan`, `gl`)
    /// limits the backends; `WGPU_ADAPTER_NAME` picks the first adapter whose name
    /// contains it (case-insensitive).
    pub fn open() -> Result<Self, FcosError> {
        pollster::block_on(Self::open_async())
    }

    /// The adapters wgpu finds, best first in the order [`open`](Self::open) picks
    /// from (discrete, integrated, virtual, CPU; Vulkan/Metal/DX12 before WebGPU
    /// before GL), limited by `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`: for an
    /// application that opens its own device on the adapter the engine would use.
    pub fn adapters() -> Vec<wgpu::Adapter> {
        pollster::block_on(Self::ranked_adapters()).1
    }

    /// The instance, [`adapters`](Self::adapters) on it, and what limited them,
    /// for the error message.
    pub(crate) async fn ranked_adapters() -> (wgpu::Instance, Vec<wgpu::Adapter>, String) {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut adapters = instance.enumerate_adapters(backends).await;
        let mut detail = String::new();
        if let Ok(b) = std::env::var("WGPU_BACKEND") {
            detail += &format!(" for WGPU_BACKEND={b}");
        }
        if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
            let name = name.to_lowercase();
            let names: Vec<String> = adapters
                .iter()
                .map(|a| adapter_label(&a.get_info()))
                .collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(name.as_str()));
            detail += &format!(" matching WGPU_ADAPTER_NAME={name} (adapters present: {names:?})");
        }
        adapters.sort_by_key(|a| rank(&a.get_info()));
        (instance, adapters, detail)
    }

    async fn open_async() -> Result<Self, FcosError> {
        let (_, adapters, detail) = Self::ranked_adapters().await;
        let adapter = adapters
            .into_iter()
            .next()
            .ok_or(FcosError::NoAdapter { detail })?;
        let info = adapter.get_info();
        let mut wanted_features = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        if shares_host_memory(&info) {
            // Lets the host path write the inputs straight into the storage buffers.
            wanted_features |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
        }
        let features = adapter.features() & wanted_features;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fcos-loss"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|source| FcosError::RequestDevice {
                adapter: adapter_label(&info),
                source,
            })?;
        let lost = Arc::new(AtomicBool::new(false));
        let uncaptured = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |_reason, _msg| {
                lost.store(true, Ordering::SeqCst);
            });
        }
        {
            let uncaptured = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut slot) = uncaptured.lock() {
                    slot.get_or_insert(e);
                }
            }));
        }
        Ok(Self::assemble(device, queue, info, lost, uncaptured))
    }

    /// Wraps a device and queue the user already has. The engine does not install
    /// callbacks on it; it catches its own errors with error scopes.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::assemble(
            device,
            queue,
            info,
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(None)),
        )
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        lost: Arc<AtomicBool>,
        uncaptured: Arc<Mutex<Option<wgpu::Error>>>,
    ) -> Self {
        GpuContext {
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            info,
            lost,
            uncaptured,
        }
    }

    /// `"<adapter name> (<backend>)"`.
    pub fn adapter_label(&self) -> String {
        adapter_label(&self.info)
    }

    /// Whether storage buffers can be mapped for writing and the adapter reads host
    /// memory anyway (a CPU or integrated adapter with
    /// [`wgpu::Features::MAPPABLE_PRIMARY_BUFFERS`]): the host path then writes the
    /// inputs straight into the storage buffers, with no staging copy.
    pub fn zero_copy_upload(&self) -> bool {
        self.features
            .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
            && shares_host_memory(&self.info)
    }

    /// Fails when the device is known to be lost, or an error escaped every scope.
    pub(crate) fn health(&self) -> Result<(), FcosError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(FcosError::DeviceLost(format!(
                "device on '{}' reported lost",
                self.adapter_label()
            )));
        }
        if let Ok(mut slot) = self.uncaptured.lock() {
            if let Some(e) = slot.take() {
                return Err(FcosError::gpu_from(describe(&e), e));
            }
        }
        Ok(())
    }
}

/// CPU and integrated adapters work in host memory: mapping a storage buffer there
/// costs its kernels nothing (on a discrete GPU it would put it across the bus).
fn shares_host_memory(info: &wgpu::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu
    )
}
