//! The uniform parameter block shared by every kernel, mirrored from `Params` in
//! `shaders/common.wgsl`.

use bytemuck::{Pod, Zeroable};

use crate::config::{LossConfig, RegLoss};
use crate::layout::{Levels, MAX_LEVELS};

/// `Params` of `shaders/common.wgsl`, byte for byte.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    /// Images `B`.
    pub batch: u32,
    /// Classes `C`.
    pub classes: u32,
    /// Positions per image `P`.
    pub positions: u32,
    /// Levels `L`.
    pub num_levels: u32,
    /// Workgroups along x: position tiles.
    pub tiles: u32,
    /// Workgroups along y: class chunks.
    pub chunks: u32,
    /// Classes per chunk.
    pub classes_per_chunk: u32,
    /// 0 = IoU, 1 = GIoU.
    pub reg_mode: u32,
    /// Focal γ.
    pub gamma: f32,
    /// Focal α.
    pub alpha: f32,
    /// 1 when γ = 2.
    pub gamma_is_two: u32,
    /// `tiles · chunks`.
    pub partials_per_image: u32,
    /// Per level `[offset, H·W, 0, 0]`.
    pub levels: [[u32; 4]; MAX_LEVELS],
}

/// How one call's work is cut into workgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Position tiles of `WORKGROUP_SIZE` positions.
    pub tiles: u32,
    /// Class chunks.
    pub chunks: u32,
    /// Classes per chunk.
    pub classes_per_chunk: u32,
}

impl Grid {
    /// Cuts `P` positions into tiles and `C` classes into chunks so that the grid has
    /// about `target_workgroups` workgroups (at least one chunk, at most `C`).
    pub fn new(positions: u32, classes: u32, batch: u32, wg: u32, target_workgroups: u32) -> Self {
        let tiles = positions.div_ceil(wg).max(1);
        let base = (tiles as u64 * batch as u64).max(1);
        let want = (target_workgroups as u64)
            .div_ceil(base)
            .clamp(1, classes.max(1) as u64) as u32;
        let classes_per_chunk = classes.div_ceil(want).max(1);
        let chunks = classes.div_ceil(classes_per_chunk).max(1);
        Grid {
            tiles,
            chunks,
            classes_per_chunk,
        }
    }

    /// Partial sums per image.
    pub fn partials_per_image(&self) -> u32 {
        self.tiles * self.chunks
    }
}

impl Params {
    /// The parameters of one call.
    pub fn new(config: &LossConfig, levels: &Levels, batch: u32, grid: Grid) -> Self {
        let mut lv = [[0u32; 4]; MAX_LEVELS];
        for (l, slot) in lv.iter_mut().enumerate().take(levels.len()) {
            *slot = [levels.offsets()[l], levels.level_size(l) as u32, 0, 0];
        }
        Params {
            batch,
            classes: config.num_classes,
            positions: levels.positions() as u32,
            num_levels: levels.len() as u32,
            tiles: grid.tiles,
            chunks: grid.chunks,
            classes_per_chunk: grid.classes_per_chunk,
            reg_mode: match config.reg_loss {
                RegLoss::Iou => 0,
                RegLoss::Giou => 1,
            },
            gamma: config.gamma,
            alpha: config.alpha,
            gamma_is_two: u32::from(config.gamma == 2.0),
            partials_per_image: grid.partials_per_image(),
            levels: lv,
        }
    }
}

/// One image's result as the finalize kernel writes it (`ImageLoss` in `finalize.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct ImageLoss {
    /// Focal loss / num_pos.
    pub cls: f32,
    /// Centerness BCE / num_pos.
    pub cnt: f32,
    /// Box loss / num_pos.
    pub reg: f32,
    /// Positives.
    pub num_pos: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_every_class_once() {
        for c in 1..200 {
            for t in [1, 64, 1024, 5000] {
                let g = Grid::new(17064, c, 2, 256, t);
                assert!(g.chunks * g.classes_per_chunk >= c);
                assert!((g.chunks - 1) * g.classes_per_chunk < c);
            }
        }
    }
}
