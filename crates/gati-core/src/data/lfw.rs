//! Labeled Faces in the Wild: `<root>/images/<Name>/<Name>_NNNN.jpg` (250x250 grayscale, aligned)
//! and `<root>/pairs.txt` (the official 10-fold verification protocol).
//!
//! Identification splits (the cached task): the people with at least `MIN_IMAGES` images
//! (62 identities, 3,023 images), classes in name order. Within each person, images in file order
//! alternate: even occurrences are `train` (the classifier and the caches learn from them), odd
//! ones `test` (cut again into calibration and evaluation halves by `gati plan`). `others` holds
//! every image of everyone else with label -1: unlabelled faces the caches may also distil from.
//!
//! Every image is centre-cropped to `crop_size()` pixels and resized to the model's input (bilinear),
//! grey repeated into R, G and B.

use super::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// People with at least this many images are the identification classes.
pub const MIN_IMAGES: usize = 20;

/// Side of the centre crop taken from the 250x250 images before resizing: measured on the
/// verification protocol (docs/results.md, "Faces"); `GATI_LFW_CROP` overrides it for that sweep.
pub const DEFAULT_CROP: u32 = 120;

pub fn crop_size() -> u32 {
    std::env::var("GATI_LFW_CROP")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| (32..=250).contains(&c))
        .unwrap_or(DEFAULT_CROP)
}

pub fn looks_like_lfw(root: &Path) -> bool {
    root.join("images").is_dir() && root.join("pairs.txt").is_file()
}

/// Every person (sorted by name) with their images (sorted).
pub fn people(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let dir = root.join("images");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if !e.path().is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(e.path())?
            .filter_map(|f| f.ok().map(|f| f.path()))
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("jpg"))
            .collect();
        files.sort();
        out.push((e.file_name().to_string_lossy().into_owned(), files));
    }
    out.sort();
    if out.is_empty() {
        bail!("{} has no person folders", dir.display());
    }
    Ok(out)
}

/// A split of the identification task: `train`, `test` or `others`.
pub fn load_split(root: &Path, split: &str, limit: Option<usize>, hw: (i64, i64)) -> Result<Dataset> {
    let people = people(root)?;
    let (ids, rest): (Vec<_>, Vec<_>) = people.into_iter().partition(|(_, f)| f.len() >= MIN_IMAGES);
    let classes: Vec<String> = ids.iter().map(|(n, _)| n.clone()).collect();
    let per_person: Vec<(i64, Vec<PathBuf>)> = match split {
        "train" | "test" => {
            let parity = usize::from(split == "test");
            ids.into_iter()
                .enumerate()
                .map(|(label, (_, files))| {
                    let kept = files.into_iter().skip(parity).step_by(2).collect();
                    (label as i64, kept)
                })
                .collect()
        }
        "others" => rest.into_iter().map(|(_, files)| (-1, files)).collect(),
        other => bail!("LFW has no split '{other}' (train, test, others, or several joined by '+')"),
    };
    let items = super::image_folder::round_robin(&per_person, limit);
    super::image_folder::decode_items(&items, classes, hw, decode_face)
}

/// A grey (or colour) face image of any size: centre crop of `crop_size()` (clamped to the image),
/// resized to `h`x`w`, as CHW RGB `u8`.
pub fn decode_face(bytes: &[u8], h: i64, w: i64) -> Result<Vec<u8>> {
    let img = super::image_folder::decode_limited(bytes)?.to_rgb8();
    let c = crop_size().min(img.width()).min(img.height());
    let (x0, y0) = ((img.width() - c) / 2, (img.height() - c) / 2);
    let face = image::imageops::crop_imm(&img, x0, y0, c, c).to_image();
    let face = image::imageops::resize(&face, w as u32, h as u32, image::imageops::FilterType::Triangle);
    Ok(super::image_folder::to_chw(&face))
}

/// One pair of the verification protocol.
#[derive(Debug, Clone)]
pub struct Pair {
    pub fold: usize,
    pub a: PathBuf,
    pub b: PathBuf,
    pub same: bool,
}

/// `pairs.txt`: header `folds n`, then per fold `n` matched (`name i j`) and `n` mismatched
/// (`name1 i name2 j`) pairs; image numbers are 1-based.
pub fn pairs(root: &Path) -> Result<Vec<Pair>> {
    let path = root.join("pairs.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().enumerate();
    let bad = |ln: usize, why: &str| anyhow::anyhow!("{}:{}: {why}", path.display(), ln + 1);
    let (_, header) = lines.next().ok_or_else(|| bad(0, "empty file"))?;
    let nums: Vec<usize> = header.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let [folds, n] = nums[..] else {
        return Err(bad(0, "header must be 'FOLDS PAIRS_PER_HALF'"));
    };
    let image = |name: &str, i: &str, ln: usize| -> Result<PathBuf> {
        let i: usize = i.parse().map_err(|_| bad(ln, &format!("image number '{i}'")))?;
        Ok(root.join("images").join(name).join(format!("{name}_{i:04}.jpg")))
    };
    let mut out = Vec::with_capacity(2 * folds * n);
    for fold in 0..folds {
        for k in 0..2 * n {
            let (ln, line) = lines.next().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: ends before the {} pairs its header announces",
                    path.display(),
                    2 * folds * n
                )
            })?;
            let f: Vec<&str> = line.split('\t').map(str::trim).collect();
            let pair = match (k < n, f.as_slice()) {
                (true, [name, i, j]) => Pair {
                    fold,
                    a: image(name, i, ln)?,
                    b: image(name, j, ln)?,
                    same: true,
                },
                (false, [n1, i, n2, j]) => Pair {
                    fold,
                    a: image(n1, i, ln)?,
                    b: image(n2, j, ln)?,
                    same: false,
                },
                _ => {
                    return Err(bad(
                        ln,
                        "expected 'name i j' (matched) or 'name1 i name2 j' (mismatched)",
                    ))
                }
            };
            out.push(pair);
        }
    }
    Ok(out)
}
