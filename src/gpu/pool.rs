//! Buffers reused across calls, grown only when a larger batch comes.

/// The six inputs, in binding order.
pub const INPUT_NAMES: [&str; 6] = [
    "cls_logits",
    "cnt_logits",
    "reg_preds",
    "cls_targets",
    "cnt_targets",
    "reg_targets",
];

/// Every buffer the engine owns.
#[derive(Debug, Default)]
pub struct Pool {
    /// Upload targets of the host-slice path, one per input tensor (heads packed by level).
    pub inputs: [Option<wgpu::Buffer>; 6],
    /// Mappable staging buffer of the host-slice path: all six inputs, one after another
    /// (unused where the inputs are written straight into mappable storage buffers).
    pub upload: Option<wgpu::Buffer>,
    /// Gradients of the host-slice backward path, one per head, laid out like the inputs.
    pub grads: [Option<wgpu::Buffer>; 3],
    /// Mappable copy of `grads` (one buffer, heads one after another).
    pub grad_readback: Option<wgpu::Buffer>,
    /// The fused pass's partial sums.
    pub partials: Option<wgpu::Buffer>,
    /// The finalize pass's per-image losses.
    pub image_losses: Option<wgpu::Buffer>,
    /// Positives per image (backward).
    pub num_pos: Option<wgpu::Buffer>,
    /// Mappable copy of `image_losses`, followed by the two timestamps.
    pub readback: Option<wgpu::Buffer>,
    /// The uniform params, one aligned slot per dispatch.
    pub params: Option<wgpu::Buffer>,
    /// Resolved timestamps.
    pub timestamps: Option<wgpu::Buffer>,
    /// How many buffers this pool has created (for tests of reuse).
    pub created: u64,
}

/// Buffers are never made smaller than this (a zero-sized binding is invalid).
const MIN_SIZE: u64 = 256;

impl Pool {
    /// Runs `make` (which [`ensure`](Self::ensure)s buffers) inside wgpu error scopes.
    /// When wgpu reports an error the pool is [`clear`](Self::clear)ed, so that an
    /// invalid buffer it handed out is not reused by a later, smaller call.
    pub fn grow(
        &mut self,
        device: &wgpu::Device,
        make: impl FnOnce(&mut Pool),
    ) -> Result<(), crate::FcosError> {
        let made = crate::gpu::engine::scoped(device, || make(self));
        if made.is_err() {
            self.clear();
        }
        made
    }

    /// Drops every buffer (the count of created buffers stays).
    pub fn clear(&mut self) {
        *self = Pool {
            created: self.created,
            ..Pool::default()
        };
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
        let size = size.max(MIN_SIZE).next_multiple_of(16);
        if slot.as_ref().is_some_and(|b| b.size() >= size) {
            return;
        }
        // Drop the old buffer first so that growing never holds both.
        *slot = None;
        *slot = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }));
        *created += 1;
    }
}
