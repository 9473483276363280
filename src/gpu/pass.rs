//! Which computation a call performs, and the fused-pass kernel that does it.

use crate::gpu::shaders::Kernel;
use crate::input::Dtype;

/// Which computation a call performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Losses only.
    Forward,
    /// Losses and gradients.
    Backward,
    /// The forward pass's memory roofline (bench harness).
    #[cfg(feature = "bench")]
    Roofline,
    /// The backward pass's memory roofline (bench harness).
    #[cfg(feature = "bench")]
    BackwardRoofline,
}

impl Pass {
    /// The loss pass: with `backward`, losses and gradients.
    pub fn losses(backward: bool) -> Self {
        if backward {
            Pass::Backward
        } else {
            Pass::Forward
        }
    }

    /// Whether the pass writes gradients (and counts positives first).
    pub fn writes_gradients(self) -> bool {
        match self {
            Pass::Forward => false,
            Pass::Backward => true,
            #[cfg(feature = "bench")]
            Pass::Roofline => false,
            #[cfg(feature = "bench")]
            Pass::BackwardRoofline => true,
        }
    }

    /// The fused-pass kernel of this pass, with or without the input checks (for a
    /// roofline: with or without the checked pass's extra reads), reading targets
    /// or assigning them from boxes, over heads of `heads`.
    pub fn kernel(self, checks: bool, boxes: bool, heads: Dtype) -> Kernel {
        let backward = self.writes_gradients();
        match self {
            Pass::Forward | Pass::Backward => Kernel::Fused {
                backward,
                checks,
                boxes,
                heads,
            },
            #[cfg(feature = "bench")]
            Pass::Roofline | Pass::BackwardRoofline => Kernel::Roofline {
                backward,
                read_all: checks,
                heads,
            },
        }
    }
}
