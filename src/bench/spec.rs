//! What a benchmark times: one shape ([`BenchSpec`]) and the named presets.

use serde::Serialize;

use crate::{FcosError, Levels};

/// The pyramid strides every benchmark uses (FCOS P3..P7).
pub(super) const STRIDES: [u32; 5] = [8, 16, 32, 64, 128];

/// One benchmark shape: what to generate and how often to time it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BenchSpec {
    /// Images per batch, `B`.
    pub batch: usize,
    /// Foreground classes, `C`.
    pub classes: u32,
    /// Image size `(H, W)` in pixels; level `l` is `ceil(H / s_l) × ceil(W / s_l)`.
    pub image: (u32, u32),
    /// Timed repetitions of each GPU measurement (medians and minima are over these).
    pub reps: usize,
    /// Seed of the synthetic batch.
    pub seed: u64,
    /// The heads' element type (`f16` / `bf16`: the synthetic heads rounded to
    /// it, uploaded as 2-byte elements). Serialized as its name.
    #[serde(serialize_with = "dtype_name")]
    pub dtype: crate::Dtype,
}

fn dtype_name<S: serde::Serializer>(d: &crate::Dtype, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

impl BenchSpec {
    /// A shape with 10 repetitions and seed 0.
    pub fn new(batch: usize, classes: u32, image: (u32, u32)) -> Self {
        BenchSpec {
            batch,
            classes,
            image,
            reps: 10,
            seed: 0,
            dtype: crate::Dtype::F32,
        }
    }

    /// Pascal VOC: `B = 2`, `C = 20`, `512 × 512`.
    pub fn voc() -> Self {
        Self::new(2, 20, (512, 512))
    }

    /// COCO: `B = 8`, `C = 80`, `800 × 1024` (the demo's batch).
    pub fn coco() -> Self {
        Self::new(8, 80, (800, 1024))
    }

    /// COCO at the full training size: `B = 16`, `C = 80`, `800 × 1333`.
    pub fn coco_large() -> Self {
        Self::new(16, 80, (800, 1333))
    }

    /// The three named presets, with their names: `voc`, `coco`, `coco-large`.
    pub fn presets() -> Vec<(&'static str, BenchSpec)> {
        vec![
            ("voc", Self::voc()),
            ("coco", Self::coco()),
            ("coco-large", Self::coco_large()),
        ]
    }

    /// A preset by name (`voc`, `coco`, `coco-large` or `coco_large`, any case).
    pub fn preset(name: &str) -> Result<BenchSpec, FcosError> {
        let wanted = name.to_ascii_lowercase().replace('_', "-");
        Self::presets()
            .into_iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                FcosError::InvalidConfig(format!(
                    "unknown benchmark preset '{name}': expected voc, coco or coco-large"
                ))
            })
    }

    /// The same shape with `batch` images.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// The same shape timed `reps` times.
    pub fn with_reps(mut self, reps: usize) -> Self {
        self.reps = reps;
        self
    }

    /// The same shape drawn with `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// `"B8 C80 800x1024"`.
    pub fn label(&self) -> String {
        shape_label(self.batch, self.classes, self.image)
    }

    /// The pyramid levels of this shape (strides 8, 16, 32, 64, 128).
    pub fn levels(&self) -> Result<Levels, FcosError> {
        Levels::from_image(self.image.0, self.image.1, &STRIDES)
    }

    /// Refuses an empty shape (`B`, `C`, `H` or `W` zero).
    pub(super) fn check(&self) -> Result<(), FcosError> {
        if self.batch == 0 || self.classes == 0 {
            return Err(FcosError::InvalidConfig(format!(
                "a benchmark needs B >= 1 and C >= 1, got B = {}, C = {}",
                self.batch, self.classes
            )));
        }
        if self.image.0 == 0 || self.image.1 == 0 {
            return Err(FcosError::InvalidConfig(format!(
                "a benchmark needs a non-empty image, got {}x{}",
                self.image.0, self.image.1
            )));
        }
        Ok(())
    }
}

/// `"B{batch} C{classes} {H}x{W}"`: the shape as specs and reports label it.
pub(super) fn shape_label(batch: usize, classes: u32, image: (u32, u32)) -> String {
    format!("B{batch} C{classes} {}x{}", image.0, image.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_shapes() {
        assert_eq!(BenchSpec::voc().label(), "B2 C20 512x512");
        assert_eq!(BenchSpec::coco().label(), "B8 C80 800x1024");
        assert_eq!(BenchSpec::coco_large().label(), "B16 C80 800x1333");
        assert_eq!(
            BenchSpec::preset("COCO_large").unwrap(),
            BenchSpec::coco_large()
        );
        assert!(BenchSpec::preset("imagenet").is_err());
    }
}
