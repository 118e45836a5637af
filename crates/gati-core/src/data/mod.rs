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
/// (`train+others`); `limit` then applies to each. `name[a:b]` keeps samples `a..b` of a split
/// (either bound may be left out): image folders load round-robin over classes, so
/// `train[:45000]` and `train[45000:]` are two disjoint class-balanced parts of CIFAR-10's.
pub fn load(root: &Path, split: &str, limit: Option<usize>, hw: (i64, i64)) -> Result<Dataset> {
    if split.contains('+') {
        let parts = split
            .split('+')
            .map(|s| load(root, s, limit, hw))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Dataset::concat(parts));
    }
    if let Some((name, range)) = parse_slice(split)? {
        let ds = load(root, name, None, hw)?;
        let end = range.end.unwrap_or(ds.len()).min(ds.len());
        if range.start >= end {
            bail!("split '{split}': {name} has {} samples, the slice is empty", ds.len());
        }
        let mut idx: Vec<usize> = (range.start..end).collect();
        if let Some(n) = limit {
            idx.truncate(n);
        }
        return Ok(ds.subset(&idx));
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

/// Half-open sample range of a `name[a:b]` split.
#[derive(Debug, PartialEq)]
pub struct Slice {
    pub start: usize,
    pub end: Option<usize>,
}

/// `name[a:b]` → `(name, a..b)`; a plain name → `None`.
pub fn parse_slice(split: &str) -> Result<Option<(&str, Slice)>> {
    let Some(open) = split.find('[') else {
        return Ok(None);
    };
    let (name, rest) = split.split_at(open);
    let inner = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .filter(|r| r.contains(':'));
    let Some(inner) = inner else {
        bail!("split '{split}': expected name[start:end], e.g. train[:45000]");
    };
    let (a, b) = inner.split_once(':').expect("checked");
    let bound = |v: &str| -> Result<Option<usize>> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        v.trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("split '{split}': '{v}' is not a sample index"))
    };
    Ok(Some((
        name,
        Slice {
            start: bound(a)?.unwrap_or(0),
            end: bound(b)?,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_parse_and_bad_ones_name_the_split() {
        assert_eq!(parse_slice("train").unwrap(), None);
        let (n, s) = parse_slice("train[:45000]").unwrap().unwrap();
        assert_eq!(
            (n, s),
            (
                "train",
                Slice {
                    start: 0,
                    end: Some(45000)
                }
            )
        );
        let (n, s) = parse_slice("train[45000:]").unwrap().unwrap();
        assert_eq!(
            (n, s),
            (
                "train",
                Slice {
                    start: 45000,
                    end: None
                }
            )
        );
        for bad in ["train[3]", "train[a:]", "train[:5"] {
            let e = parse_slice(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
