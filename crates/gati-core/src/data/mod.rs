//! Labelled image datasets held in memory as `u8` pixels `[N, 3, H, W]`.
//!
//! Two on-disk formats: image folders (`<root>/<split>/<class>/*.{jpg,png}`) and the original
//! CIFAR-10/100 binary batches.

mod cifar_binary;
mod image_folder;
pub mod lfw;

pub use cifar_binary::{load_cifar_binary, CIFAR10_CLASSES};
pub use image_folder::{decode_image, load_image_folder};

use anyhow::{bail, Result};
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct Dataset {
    /// `u8` pixels, `[N, 3, H, W]`.
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub classes: Vec<String>,
    /// Where each sample came from (a file path, or `file#record`), for error messages.
    pub sources: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of the samples at `indices`, `[len, 3, H, W]` `u8`.
    pub fn pixels(&self, indices: &[usize]) -> Tensor {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        self.images.index_select(0, &Tensor::from_slice(&idx))
    }

    /// Pixels of samples `start..end`.
    pub fn pixel_range(&self, start: usize, end: usize) -> Tensor {
        self.images.narrow(0, start as i64, (end - start) as i64)
    }

    /// A new dataset with the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.pixels(indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            sources: indices.iter().map(|&i| self.sources[i].clone()).collect(),
        }
    }

    /// Keeps the first `n` samples (all when `n` is larger).
    pub fn truncate(self, n: usize) -> Dataset {
        if n >= self.len() {
            return self;
        }
        let idx: Vec<usize> = (0..n).collect();
        self.subset(&idx)
    }

    /// The samples of every part, in order (classes from the first).
    pub fn concat(parts: Vec<Dataset>) -> Dataset {
        let images = Tensor::cat(&parts.iter().map(|d| &d.images).collect::<Vec<_>>(), 0);
        let mut it = parts.into_iter();
        let mut first = it.next().expect("at least one part");
        for d in it {
            first.labels.extend(d.labels);
            first.sources.extend(d.sources);
        }
        first.images = images;
        first
    }

    fn check(self) -> Result<Dataset> {
        if self.images.kind() != Kind::Uint8 || self.images.dim() != 4 {
            bail!("internal: dataset images must be u8 [N, 3, H, W]");
        }
        Ok(self)
    }
}

/// Face images (any size; centre crop, resize, grey → RGB as `lfw::decode_face`), labelled as given.
pub fn decode_faces(items: &[(std::path::PathBuf, i64)], hw: (i64, i64)) -> Result<Dataset> {
    image_folder::decode_items(items, Vec::new(), hw, lfw::decode_face)
}

/// Loads a dataset directory in whichever format it holds: CIFAR binary batches if
/// `data_batch_1.bin`/`test_batch.bin`/`train.bin`/`test.bin` are there, LFW if `images/` and
/// `pairs.txt` are, an image folder otherwise. `split` may join several with `+`
/// (`train+others`); `limit` then applies to each.
pub fn load(root: &Path, split: &str, limit: Option<usize>, hw: (i64, i64)) -> Result<Dataset> {
    if split.contains('+') {
        let parts = split
            .split('+')
            .map(|s| load(root, s, limit, hw))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Dataset::concat(parts));
    }
    let ds = if cifar_binary::looks_like_cifar(root) {
        load_cifar_binary(root, split)?
    } else if lfw::looks_like_lfw(root) {
        lfw::load_split(root, split, limit, hw)?
    } else {
        load_image_folder(root, split, limit, hw)?
    };
    Ok(match limit {
        Some(n) => ds.truncate(n),
        None => ds,
    })
}
