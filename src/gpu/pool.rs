//! Buffers reused across calls, grown only when a larger batch comes.

/// Index of each input head in [`Pool::inputs`].
pub const INPUT_NAMES: [&str; 6] = [
    "cls_logits",
    "cnt_logits",
    "reg_preds",
    "cls_targets",
    "cnt_targets",
    "reg_targets",
];

/// Every buffer the engine owns.
#[derive(Debug)]
pub struct Pool {
    /// Upload targets of the host-slice path, one per input tensor (heads packed by level).
    pub inputs: [Option<wgpu::Buffer>; 6],
    /// The fused pass's partial sums.
    pub partials: Option<wgpu::Buffer>,
    /// The finalize pass's per-image losses.
    pub image_losses: Option<wgpu::Buffer>,
    /// Mappable copy of `image_losses`.
    pub readback: Option<wgpu::Buffer>,
    /// The uniform params.
    pub params: Option<wgpu::Buffer>,
    /// How many buffers this pool has created (for tests of reuse).
    pub created: u64,
}

/// Storage buffers are never bound smaller than this (a zero-sized binding is invalid).
const MIN_SIZE: u64 = 16;

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Pool {
            inputs: Default::default(),
            partials: None,
            image_losses: None,
            readback: None,
            params: None,
            created: 0,
        }
    }

    /// Makes `slot` hold a buffer of at least `size` bytes, creating it only when it is
    /// missing or too small.
    pub fn ensure(
        slot: &mut Option<wgpu::Buffer>,
        created: &mut u64,
        device: &wgpu::Device,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) {
        let size = size
            .max(MIN_SIZE)
            .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        if slot.as_ref().is_some_and(|b| b.size() >= size) {
            return;
        }
        *slot = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }));
        *created += 1;
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}
