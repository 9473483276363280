//! Pyramid levels: shapes, flat offsets and the level-flatten index map of docs/contract.md §1.1.

use crate::error::FcosError;

/// The most pyramid levels one layout may have: a sanity bound (each level is at
/// least one dispatch per call), far above the five of FCOS.
pub const MAX_LEVELS: usize = 64;

/// The pyramid levels of one batch: `H_l × W_l` per level, their offsets into the
/// flattened position axis, and `P = Σ H_l·W_l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    shapes: Vec<(u32, u32)>,
    offsets: Vec<u32>,
    positions: u32,
}

impl Levels {
    /// Levels from explicit `(H_l, W_l)` shapes. A level with `H` or `W` = 0 is valid
    /// and holds no positions.
    pub fn from_shapes(shapes: &[(u32, u32)]) -> Result<Self, FcosError> {
        if shapes.is_empty() {
            return Err(FcosError::InvalidLayout(
                "at least one pyramid level is needed, got 0".into(),
            ));
        }
        if shapes.len() > MAX_LEVELS {
            return Err(FcosError::InvalidLayout(format!(
                "at most {MAX_LEVELS} pyramid levels are supported, got {}",
                shapes.len()
            )));
        }
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut total: u64 = 0;
        for &(h, w) in shapes {
            offsets.push(total as u32);
            total += h as u64 * w as u64;
            if total > u32::MAX as u64 / 4 {
                return Err(FcosError::InvalidLayout(format!(
                    "too many positions: the levels {shapes:?} hold more than {} positions",
                    u32::MAX / 4
                )));
            }
        }
        Ok(Levels {
            shapes: shapes.to_vec(),
            offsets,
            positions: total as u32,
        })
    }

    /// Levels of an `h × w` image with the given strides: `H_l = ceil(h / s_l)`, `W_l = ceil(w / s_l)`.
    pub fn from_image(h: u32, w: u32, strides: &[u32]) -> Result<Self, FcosError> {
        if let Some(s) = strides.iter().find(|&&s| s == 0) {
            return Err(FcosError::InvalidLayout(format!(
                "strides must be positive, got {s} in {strides:?}"
            )));
        }
        let shapes: Vec<(u32, u32)> = strides
            .iter()
            .map(|&s| (h.div_ceil(s), w.div_ceil(s)))
            .collect();
        Self::from_shapes(&shapes)
    }

    /// Number of levels `L`.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Always false: a layout has at least one level.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// `(H_l, W_l)` of every level.
    pub fn shapes(&self) -> &[(u32, u32)] {
        &self.shapes
    }

    /// Offset of level `l` in the flattened position axis: `Σ_{k<l} H_k·W_k`.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// `H_l · W_l` of level `l`.
    pub fn level_size(&self, l: usize) -> usize {
        let (h, w) = self.shapes[l];
        h as usize * w as usize
    }

    /// `P = Σ_l H_l·W_l`, the positions per image.
    pub fn positions(&self) -> usize {
        self.positions as usize
    }

    /// Which level flat position `p` lies in, and its index `y·W_l + x` within that level.
    pub fn locate(&self, p: usize) -> Option<(usize, usize)> {
        if p >= self.positions() {
            return None;
        }
        let l = self.offsets.partition_point(|&o| o as usize <= p) - 1;
        // Skip empty levels that share the same offset.
        let mut l = l;
        while self.level_size(l) == 0 || p >= self.offsets[l] as usize + self.level_size(l) {
            l += 1;
        }
        Some((l, p - self.offsets[l] as usize))
    }

    /// Element count of one level tensor `[B, ch, H_l, W_l]`.
    pub fn level_len(&self, l: usize, batch: usize, channels: usize) -> usize {
        batch * channels * self.level_size(l)
    }

    /// Element count of one head with every level packed one after another
    /// (`Σ_l B·ch·H_l·W_l = B·ch·P`), the layout of the device-buffer path.
    pub fn packed_len(&self, batch: usize, channels: usize) -> usize {
        batch * channels * self.positions()
    }

    /// Element offset of level `l` in a packed head buffer: `B·ch·off_l`.
    pub fn packed_offset(&self, l: usize, batch: usize, channels: usize) -> usize {
        batch * channels * self.offsets[l] as usize
    }

    /// The level-flatten index map: the element of level `l`'s NCHW tensor holding
    /// image `b`, channel `c` at in-level position `pix = y·W_l + x`:
    /// `((b·ch + c)·H_l·W_l) + pix`.
    pub fn nchw_index(&self, l: usize, channels: usize, b: usize, c: usize, pix: usize) -> usize {
        (b * channels + c) * self.level_size(l) + pix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_image_uses_ceil() {
        let l = Levels::from_image(100, 150, &[8, 16, 32, 64, 128]).unwrap();
        assert_eq!(l.shapes(), &[(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)]);
        assert_eq!(l.offsets(), &[0, 247, 317, 337, 343]);
        assert_eq!(l.positions(), 345);
    }

    #[test]
    fn locate_skips_empty_levels() {
        let l = Levels::from_shapes(&[(2, 2), (0, 3), (1, 1)]).unwrap();
        assert_eq!(l.locate(3), Some((0, 3)));
        assert_eq!(l.locate(4), Some((2, 0)));
        assert_eq!(l.locate(5), None);
    }
}
