//! The result slots of recorded calls: each slot owns the work buffers of one call
//! (its own pool: params, partial sums, counts, per-image sums, readback, stamp),
//! so that several calls can be recorded and in flight at once without one
//! overwriting another's results. A slot is busy from the recording of a call
//! until its results are read (or its handle is dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::FcosError;
use crate::gpu::pool::Pool;

/// Slots a new engine has.
pub const DEFAULT_RING_SIZE: usize = 4;

/// Where a `map_async` callback leaves its result.
pub(crate) type MapResult = Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>;

/// What a busy slot holds.
#[derive(Debug)]
pub(crate) struct Busy {
    /// The call's generation (unique per engine), which its commands copy into the
    /// readback.
    pub generation: u64,
    /// A non-blocking read's mapping of the readback, once requested: the
    /// callback's result lands here.
    pub mapping: Option<MapResult>,
}

/// One slot.
#[derive(Debug, Default)]
pub(crate) struct RingSlot {
    pub pool: Pool,
    pub busy: Option<Busy>,
}

/// The slots, the generation counter, and the tasks waiting for a free slot.
#[derive(Debug)]
pub(crate) struct Ring {
    slots: Vec<Mutex<RingSlot>>,
    generation: AtomicU64,
    waiters: Mutex<Vec<Waker>>,
}

impl Ring {
    /// `n` free slots.
    pub fn new(n: usize) -> Self {
        Ring {
            slots: (0..n).map(|_| Mutex::new(RingSlot::default())).collect(),
            generation: AtomicU64::new(1),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// Slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether any slot holds a call not yet read.
    pub fn any_busy(&self) -> bool {
        (0..self.len()).any(|i| self.lock(i).busy.is_some())
    }

    /// Slot `i`, locked (a lock poisoned by a panic elsewhere still guards whole
    /// buffers).
    pub fn lock(&self, i: usize) -> MutexGuard<'_, RingSlot> {
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot, locked, with a new generation; an error when every slot holds
    /// a call not yet read.
    pub fn acquire(&self) -> Result<(usize, u64, MutexGuard<'_, RingSlot>), FcosError> {
        for i in 0..self.len() {
            let slot = self.lock(i);
            if slot.busy.is_none() {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                return Ok((i, generation, slot));
            }
        }
        Err(FcosError::InvalidCall(format!(
            "all {} result slots hold recorded calls not yet read: read one (or drop its PendingLosses) first, or raise FcosLoss::set_ring_size",
            self.len()
        )))
    }

    /// Buffers the slots' pools have created.
    pub fn buffers_created(&self) -> u64 {
        (0..self.len()).map(|i| self.lock(i).pool.created).sum()
    }

    /// Reserves a free slot for a call of a new generation, if one is free.
    pub fn try_reserve(&self) -> Option<(usize, u64)> {
        let (i, generation, mut slot) = self.acquire().ok()?;
        slot.busy = Some(Busy {
            generation,
            mapping: None,
        });
        Some((i, generation))
    }

    /// Reserves a slot, waiting (without blocking the executor) until one is free.
    pub fn reserve(&self) -> Reserve<'_> {
        Reserve { ring: self }
    }

    /// Frees slot `i` if it still holds the call of `generation`; cancels a
    /// mapping in progress.
    pub fn release(&self, i: usize, generation: u64, readback: Option<&wgpu::Buffer>) {
        let mut slot = self.lock(i);
        if slot
            .busy
            .as_ref()
            .is_some_and(|b| b.generation == generation)
        {
            if let (Some(busy), Some(buf)) = (&slot.busy, readback) {
                if busy.mapping.is_some() {
                    buf.unmap();
                }
            }
            slot.busy = None;
            drop(slot);
            let waiters =
                std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
            waiters.into_iter().for_each(Waker::wake);
        }
    }
}

/// The future of [`Ring::reserve`].
pub(crate) struct Reserve<'r> {
    ring: &'r Ring,
}

impl Future for Reserve<'_> {
    type Output = (usize, u64);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(usize, u64)> {
        // Registered before trying, so a slot freed in between still wakes us.
        self.ring
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cx.waker().clone());
        match self.ring.try_reserve() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}
