//! The original CIFAR binary formats: CIFAR-10 records are `<label u8><3072 pixel bytes>` in
//! `data_batch_{1..5}.bin` / `test_batch.bin`; CIFAR-100 records are `<coarse u8><fine u8><3072>`
//! in `train.bin` / `test.bin` (the fine label is used). Pixels are CHW, 32x32.

use super::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const PIXELS: usize = 3 * 32 * 32;

pub(super) fn looks_like_cifar(root: &Path) -> bool {
    ["data_batch_1.bin", "test_batch.bin", "train.bin", "test.bin"]
        .iter()
        .any(|f| root.join(f).is_file())
}

/// Loads split `train` or `test` from a CIFAR-10 or CIFAR-100 binary folder.
pub fn load_cifar_binary(root: &Path, split: &str) -> Result<Dataset> {
    let cifar100 = root.join("train.bin").is_file() || root.join("test.bin").is_file();
    let files: Vec<PathBuf> = match (cifar100, split) {
        (false, "train") => (1..=5).map(|i| root.join(format!("data_batch_{i}.bin"))).collect(),
        (false, "test") => vec![root.join("test_batch.bin")],
        (true, "train") => vec![root.join("train.bin")],
        (true, "test") => vec![root.join("test.bin")],
        (_, other) => bail!("CIFAR binary split must be 'train' or 'test', got '{other}'"),
    };
    let label_bytes = if cifar100 { 2 } else { 1 };
    let record = label_bytes + PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut sources = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading CIFAR batch {}", f.display()))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            bail!(
                "{} is {} bytes, not a whole number of {record}-byte CIFAR-{} records",
                f.display(),
                bytes.len(),
                if cifar100 { 100 } else { 10 }
            );
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            labels.push(rec[label_bytes - 1] as i64);
            pixels.extend_from_slice(&rec[label_bytes..]);
            sources.push(format!("{}#{i}", f.display()));
        }
    }
    let classes = class_names(root, cifar100)?;
    if let Some(bad) = labels.iter().position(|&l| l as usize >= classes.len()) {
        bail!(
            "{}: label {} out of range for {} classes",
            sources[bad],
            labels[bad],
            classes.len()
        );
    }
    let n = labels.len() as i64;
    Dataset {
        images: Tensor::from_slice(&pixels).view([n, 3, 32, 32]),
        labels,
        classes,
        sources,
    }
    .check()
}

/// Names from `batches.meta.txt` / `fine_label_names.txt` when present.
fn class_names(root: &Path, cifar100: bool) -> Result<Vec<String>> {
    let meta = root.join(if cifar100 {
        "fine_label_names.txt"
    } else {
        "batches.meta.txt"
    });
    if meta.is_file() {
        let text = std::fs::read_to_string(&meta)?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let want = if cifar100 { 100 } else { 10 };
        if names.len() != want {
            bail!("{} lists {} class names, expected {want}", meta.display(), names.len());
        }
        return Ok(names);
    }
    Ok(if cifar100 {
        (0..100).map(|i| format!("class{i:02}")).collect()
    } else {
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    })
}
