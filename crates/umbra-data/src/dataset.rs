//! The common in-memory dataset every trainer and sampler reads: images `[n, c, h, w]` in [0, 1] + labels.

use crate::error::{DataError, Result};
use candle_core::{Device, Tensor};

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::Invalid(format!("unknown split `{s}`; use `train` or `test`"))),
        }
    }
}

/// What the rows of a [`Dataset`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Images with values in [0, 1], shape `[n, c, h, w]`.
    Images,
    /// 2-D points, stored as shape `[n, 2, 1, 1]`; values are unbounded coordinates.
    Points2d,
}

/// A dataset held in memory as f32.
///
/// `images` is row-major `[n, channels, height, width]`; for [`DataKind::Images`] every value is in
/// [0, 1]. `labels[i]` is the class of row `i` (`0..num_classes`).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Short name, e.g. `digits`, `mnist`, `toy2d:moons` (with the split, e.g. `digits/train`).
    pub name: String,
    pub kind: DataKind,
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

impl Dataset {
    /// Build a dataset, checking that the buffer length matches the shape and labels match the count.
    pub fn new(
        name: impl Into<String>,
        kind: DataKind,
        images: Vec<f32>,
        labels: Vec<u8>,
        shape: [usize; 4],
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        let [n, channels, height, width] = shape;
        if images.len() != n * channels * height * width {
            return Err(DataError::Invalid(format!(
                "dataset {name}: {} values do not fill shape [{n}, {channels}, {height}, {width}]",
                images.len()
            )));
        }
        if labels.len() != n {
            return Err(DataError::Invalid(format!("dataset {name}: {} labels for {n} rows", labels.len())));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes.max(1)) {
            return Err(DataError::Invalid(format!("dataset {name}: label {bad} out of range 0..{num_classes}")));
        }
        Ok(Dataset { name, kind, images, labels, n, channels, height, width, num_classes })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `[n, c, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.channels, self.height, self.width]
    }

    /// Values per row: `c * h * w` (784 for MNIST, 64 for digits, 2 for toy points).
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Row `i` as a flat slice of `c*h*w` values.
    pub fn image(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.images[i * d..(i + 1) * d]
    }

    /// Toy datasets: row `i` as a point.
    pub fn point(&self, i: usize) -> [f32; 2] {
        let r = self.image(i);
        [r[0], r[1]]
    }

    /// All rows as 2-D points (toy datasets; for images it takes the first two values of each row).
    pub fn points(&self) -> Vec<[f32; 2]> {
        (0..self.n).map(|i| self.point(i)).collect()
    }

    fn check_indices(&self, idx: &[usize]) -> Result<()> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.n) {
            return Err(DataError::Invalid(format!(
                "index {bad} out of range for dataset {} with {} rows",
                self.name, self.n
            )));
        }
        Ok(())
    }

    /// Gather rows `idx` into one flat buffer.
    pub fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        self.check_indices(idx)?;
        let d = self.dim();
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            out.extend_from_slice(self.image(i));
        }
        Ok(out)
    }

    /// Rows `idx` as a tensor `[b, c, h, w]` (f32) on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let data = self.gather(idx)?;
        Ok(Tensor::from_vec(data, (idx.len(), self.channels, self.height, self.width), device)?)
    }

    /// Rows `idx` flattened to a tensor `[b, c*h*w]` (f32): the input of an MLP (VAE, toy diffusion).
    pub fn batch_flat(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let data = self.gather(idx)?;
        Ok(Tensor::from_vec(data, (idx.len(), self.dim()), device)?)
    }

    /// Labels of rows `idx` as a u32 tensor `[b]` (class indices for cross-entropy / conditioning).
    pub fn batch_labels(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        self.check_indices(idx)?;
        let l: Vec<u32> = idx.iter().map(|&i| self.labels[i] as u32).collect();
        Ok(Tensor::from_vec(l, idx.len(), device)?)
    }

    /// The whole dataset as one tensor `[n, c, h, w]`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.images.clone(), (self.n, self.channels, self.height, self.width), device)?)
    }

    /// A new dataset with rows `idx` (in that order).
    pub fn subset(&self, idx: &[usize]) -> Result<Dataset> {
        let images = self.gather(idx)?;
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        Dataset::new(
            self.name.clone(),
            self.kind,
            images,
            labels,
            [idx.len(), self.channels, self.height, self.width],
            self.num_classes,
        )
    }

    /// The first `k` rows (all rows if `k >= n`).
    pub fn take(&self, k: usize) -> Dataset {
        let k = k.min(self.n);
        let d = self.dim();
        Dataset {
            name: self.name.clone(),
            kind: self.kind,
            images: self.images[..k * d].to_vec(),
            labels: self.labels[..k].to_vec(),
            n: k,
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }

    /// Count of each label `0..num_classes`.
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut h = vec![0usize; self.num_classes.max(1)];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    /// Mean of all values (the mean pixel intensity for images).
    pub fn mean(&self) -> f64 {
        if self.images.is_empty() {
            return 0.0;
        }
        self.images.iter().map(|&v| v as f64).sum::<f64>() / self.images.len() as f64
    }

    /// A one-paragraph description: count, shape, value range, label histogram.
    pub fn summary(&self) -> String {
        let (lo, hi) = self.images.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let hist =
            self.label_histogram().iter().enumerate().map(|(k, c)| format!("{k}:{c}")).collect::<Vec<_>>().join(" ");
        let shape = match self.kind {
            DataKind::Images => format!("{}x{}x{} (c x h x w)", self.channels, self.height, self.width),
            DataKind::Points2d => "2-D points".to_string(),
        };
        format!(
            "{}: {} rows, {shape}, values in [{lo:.3}, {hi:.3}], mean {:.4}\nlabels ({} classes): {hist}",
            self.name,
            self.n,
            self.mean(),
            self.num_classes
        )
    }
}
