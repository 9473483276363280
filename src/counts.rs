//! The counting phase of data-parallel training: each image's positives and
//! centerness-target sum, what a replica all-reduces before its loss call
//! (docs/contract.md §8).

use crate::config::Denominators;
use crate::error::FcosError;
use crate::layout::Levels;

/// Each image's positives `n_b` and centerness-target sum `Z_b`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    /// Positives per image (`cnt_targets > -1`).
    pub num_pos: Vec<u32>,
    /// Centerness targets summed over each image's positives.
    pub ctr: Vec<f64>,
}

impl Counts {
    /// The counts of `batch` images of flattened `cnt_targets` (`[B, P]`), on the
    /// host in `f64`.
    pub fn of(levels: &Levels, batch: usize, cnt_targets: &[f32]) -> Result<Self, FcosError> {
        let p = levels.positions();
        if cnt_targets.len() != batch * p {
            return Err(FcosError::shape(
                "cnt_targets",
                format!("[{batch}, {p}] = {} elements", batch * p),
                format!("{} elements", cnt_targets.len()),
            ));
        }
        let images = || (0..batch).map(|b| &cnt_targets[b * p..(b + 1) * p]);
        Ok(Counts {
            num_pos: images()
                .map(|t| t.iter().filter(|&&c| c > -1.0).count() as u32)
                .collect(),
            ctr: images()
                .map(|t| t.iter().filter(|&&c| c > -1.0).map(|&c| c as f64).sum())
                .collect(),
        })
    }

    /// `(Σ_b n_b, Σ_b Z_b)`: this replica's share of the global denominators.
    pub fn totals(&self) -> (f64, f64) {
        (
            self.num_pos.iter().map(|&n| n as f64).sum(),
            self.ctr.iter().sum(),
        )
    }
}

impl Denominators {
    /// The global denominators of replicas with these counts, as an all-reduce
    /// (mean over replicas, mmdet's `reduce_mean`) computes them on the host:
    /// `N_g = mean_r Σ_b n_b`, `Z_g = mean_r Σ_b Z_b`.
    pub fn mean_of(replicas: &[Counts]) -> Denominators {
        let r = replicas.len().max(1) as f64;
        let (n, z) = replicas
            .iter()
            .map(Counts::totals)
            .fold((0.0, 0.0), |a, t| (a.0 + t.0, a.1 + t.1));
        Denominators {
            num_pos: (n / r) as f32,
            ctr: (z / r) as f32,
        }
    }
}
