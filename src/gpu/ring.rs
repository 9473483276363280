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
    /// A recorded call (freed only by its read or its handle's drop), not an
    /// `async` host call (which frees its slot itself).
    pub recorded: bool,
    /// A read-back thread has the readback (or the gradients' copy) mapped or
    /// mapping: the slot is freed only once it is done.
    pub reading: bool,
    /// Released while `reading`: the read-back thread frees the slot when done.
    pub released: bool,
}

impl Busy {
    /// A call of `generation`, nothing read yet.
    pub fn new(generation: u64, recorded: bool) -> Self {
        Busy {
            generation,
            mapping: None,
            recorded,
            reading: false,
            released: false,
        }
    }
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
        self.free_slot().ok_or_else(|| self.full())
    }

    /// A free slot, locked, with a new generation.
    fn free_slot(&self) -> Option<(usize, u64, MutexGuard<'_, RingSlot>)> {
        (0..self.len()).find_map(|i| {
            let slot = self.lock(i);
            slot.busy.is_none().then(|| {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                (i, generation, slot)
            })
        })
    }

    /// The error of a ring whose every slot holds a recorded call not yet read.
    fn full(&self) -> FcosError {
        FcosError::InvalidCall(format!(
            "all {} result slots hold recorded calls not yet read: read one (or drop its PendingLosses) first, or raise FcosLoss::set_ring_size",
            self.len()
        ))
    }

    /// Buffers the slots' pools have created.
    pub fn buffers_created(&self) -> u64 {
        (0..self.len()).map(|i| self.lock(i).pool.created).sum()
    }

    /// Reserves a free slot for an `async` host call of a new generation, if one
    /// is free.
    pub fn try_reserve(&self) -> Option<(usize, u64)> {
        let (i, generation, mut slot) = self.free_slot()?;
        slot.busy = Some(Busy::new(generation, false));
        Some((i, generation))
    }

    /// Reserves a slot for an `async` host call, waiting (without blocking the
    /// executor) while a slot is held by a call that frees it by itself; an error
    /// when every slot holds a recorded call nobody is reading (waiting could
    /// never end).
    pub fn reserve(&self) -> Reserve<'_> {
        Reserve { ring: self }
    }

    /// Whether some slot will be freed without the caller's help: an `async` host
    /// call, or a read under way.
    fn frees_itself(&self) -> bool {
        (0..self.len()).any(|i| {
            self.lock(i)
                .busy
                .as_ref()
                .is_some_and(|b| !b.recorded || b.reading)
        })
    }

    /// Marks slot `i`'s call of `generation` as being read by a read-back thread.
    pub fn start_reading(&self, i: usize, generation: u64) -> Result<(), FcosError> {
        let mut slot = self.lock(i);
        match slot.busy.as_mut() {
            Some(b) if b.generation == generation => {
                if b.reading || b.mapping.is_some() {
                    return Err(FcosError::InvalidCall(
                        "a read of this call is already under way".into(),
                    ));
                }
                b.reading = true;
                Ok(())
            }
            _ => Err(FcosError::InvalidCall(
                "this call's results were already read".into(),
            )),
        }
    }

    /// The read-back thread is done with slot `i` (its buffers are unmapped): the
    /// slot is freed if it was released meanwhile.
    pub fn done_reading(&self, i: usize, generation: u64) {
        let mut slot = self.lock(i);
        let free = match slot.busy.as_mut() {
            Some(b) if b.generation == generation => {
                b.reading = false;
                b.released
            }
            _ => false,
        };
        if free {
            slot.busy = None;
            drop(slot);
            self.wake();
        }
    }

    fn wake(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Frees slot `i` if it still holds the call of `generation`: at once, or,
    /// while a read-back thread has its buffers, when that thread is done. A
    /// non-blocking read's mapping in progress is cancelled.
    pub fn release(&self, i: usize, generation: u64, readback: Option<&wgpu::Buffer>) {
        let mut slot = self.lock(i);
        let Some(busy) = slot.busy.as_mut().filter(|b| b.generation == generation) else {
            return;
        };
        if busy.reading {
            busy.released = true;
            return;
        }
        if let (Some(done), Some(buf)) = (&busy.mapping, readback) {
            // A mapping that failed left the buffer unmapped: unmapping it again
            // would itself be an error.
            let failed = matches!(
                *done.lock().unwrap_or_else(|e| e.into_inner()),
                Some(Err(_))
            );
            if !failed {
                buf.unmap();
            }
        }
        slot.busy = None;
        drop(slot);
        self.wake();
    }
}

/// The future of [`Ring::reserve`].
pub(crate) struct Reserve<'r> {
    ring: &'r Ring,
}

impl Future for Reserve<'_> {
    type Output = Result<(usize, u64), FcosError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Registered before trying, so a slot freed in between still wakes us.
        self.ring
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cx.waker().clone());
        if let Some(r) = self.ring.try_reserve() {
            return Poll::Ready(Ok(r));
        }
        if self.ring.frees_itself() {
            return Poll::Pending;
        }
        Poll::Ready(Err(self.ring.full()))
    }
}
