//! `<root>/<split>/<class>/*.{jpg,jpeg,png}`; class index = position in the sorted class folders.

use super::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// Loads a split. Files are ordered round-robin over classes (the first file of every class, then
/// the second, ...), so any prefix, such as `limit`, is class-balanced.
pub fn load_image_folder(root: &Path, split: &str, limit: Option<usize>, hw: (i64, i64)) -> Result<Dataset> {
    let dir = root.join(split);
    if !dir.is_dir() {
        bail!("dataset split folder {} does not exist", dir.display());
    }
    let mut classes: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!(
            "{} has no class folders (expected {}/<class>/*.jpg)",
            dir.display(),
            dir.display()
        );
    }
    let mut per_class: Vec<Vec<PathBuf>> = Vec::with_capacity(classes.len());
    for c in &classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(c))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        per_class.push(files);
    }
    let per_class: Vec<(i64, Vec<PathBuf>)> = per_class.into_iter().enumerate().map(|(l, f)| (l as i64, f)).collect();
    let items = round_robin(&per_class, limit);
    if items.is_empty() {
        bail!("{} has class folders but no .jpg/.png images", dir.display());
    }
    decode_items(&items, classes, hw, decode_image)
}

/// Files ordered round-robin over classes (the first file of every class, then the second, ...),
/// so that any prefix, such as `limit`, is class-balanced.
pub(super) fn round_robin(per_class: &[(i64, Vec<PathBuf>)], limit: Option<usize>) -> Vec<(PathBuf, i64)> {
    let longest = per_class.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    let mut items = Vec::new();
    for i in 0..longest {
        for (label, files) in per_class {
            if let Some(f) = files.get(i) {
                if limit.is_some_and(|n| items.len() >= n) {
                    return items;
                }
                items.push((f.clone(), *label));
            }
        }
    }
    items
}

/// A function from encoded bytes to CHW RGB `u8` of size `h`x`w`.
pub(super) type Decoder = fn(&[u8], i64, i64) -> Result<Vec<u8>>;

/// Decodes `items` into a dataset of `hw` images.
pub(super) fn decode_items(
    items: &[(PathBuf, i64)],
    classes: Vec<String>,
    hw: (i64, i64),
    decode: Decoder,
) -> Result<Dataset> {
    let (h, w) = hw;
    let pixels = decode_all(items, h, w, decode)?;
    let n = items.len() as i64;
    Dataset {
        images: Tensor::from_slice(&pixels).view([n, 3, h, w]),
        labels: items.iter().map(|(_, l)| *l).collect(),
        classes,
        sources: items.iter().map(|(p, _)| p.display().to_string()).collect(),
    }
    .check()
}

/// Decodes on every core; pixels are CHW `u8`.
fn decode_all(items: &[(PathBuf, i64)], h: i64, w: i64, decode: Decoder) -> Result<Vec<u8>> {
    let per = (3 * h * w) as usize;
    let mut out = vec![0u8; per * items.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = items.len().div_ceil(threads).max(1);
    let pb = crate::progress::bar(items.len() as u64, "decode");
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = out
            .chunks_mut(per * chunk)
            .zip(items.chunks(chunk))
            .map(|(dst, src)| {
                let pb = pb.clone();
                s.spawn(move || -> Result<()> {
                    for ((path, _), d) in src.iter().zip(dst.chunks_mut(per)) {
                        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                        let chw = decode(&bytes, h, w).with_context(|| format!("image {}", path.display()))?;
                        d.copy_from_slice(&chw);
                        pb.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("decoder thread panicked")?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(out)
}

/// Decodes JPEG or PNG bytes to CHW RGB `u8`, refusing any size but `h`x`w`.
pub fn decode_image(bytes: &[u8], h: i64, w: i64) -> Result<Vec<u8>> {
    let img = decode_limited(bytes)?.to_rgb8();
    if img.height() as i64 != h || img.width() as i64 != w {
        bail!("is {}x{} (WxH), expected {w}x{h}", img.width(), img.height());
    }
    Ok(to_chw(&img))
}

/// Decodes JPEG or PNG bytes within size limits: a decompression bomb stops at the limit instead
/// of allocating gigabytes.
pub(super) fn decode_limited(bytes: &[u8]) -> Result<image::DynamicImage> {
    let format = image::guess_format(bytes).context("not a recognised image format")?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(4096);
    limits.max_image_height = Some(4096);
    limits.max_alloc = Some(64 << 20);
    reader.limits(limits);
    reader.decode().context("cannot decode")
}

/// HWC RGB pixels to CHW.
pub(super) fn to_chw(img: &image::RgbImage) -> Vec<u8> {
    let hw = (img.width() * img.height()) as usize;
    let mut chw = vec![0u8; 3 * hw];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * hw + i] = px[c];
        }
    }
    chw
}
