//! TensorFlow.js weights (a `*-weights_manifest.json` naming tensors in file order, plus the
//! `.bin` shards it lists) to safetensors: uint8/uint16-quantised tensors de-quantised
//! (`q · scale + min`), convolution filters HWIO → OIHW, names kept with `/` → `.`, and every
//! tensor checked against the model's variables.

use crate::files::write_atomic;
use crate::weights::check_against;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

#[derive(Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    shape: Vec<i64>,
    dtype: String,
    quantization: Option<Quantization>,
}

#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    scale: f64,
    min: f64,
}

/// Reads every tensor a manifest names, de-quantised, in the model's layout (OIHW filters).
pub fn read(manifest: &Path) -> Result<BTreeMap<String, Tensor>> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let groups: Vec<Group> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a TF.js weights manifest", manifest.display()))?;
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for g in &groups {
        // A group's tensors are packed back to back across its shards, in order.
        let mut bytes = Vec::new();
        for p in &g.paths {
            let file = crate::files::file_in(dir, p)?;
            bytes.extend(std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
        }
        let shards = g.paths.join(", ");
        let mut at = 0usize;
        for e in &g.weights {
            let n: i64 = e.shape.iter().product();
            let (width, decode): (usize, fn(&[u8]) -> f64) = match (&e.quantization, e.dtype.as_str()) {
                (Some(q), "float32") if q.dtype == "uint8" => (1, |b| b[0] as f64),
                (Some(q), "float32") if q.dtype == "uint16" => (2, |b| u16::from_le_bytes([b[0], b[1]]) as f64),
                (None, "float32") => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
                (q, dtype) => bail!(
                    "{}: tensor {} has dtype {dtype}{}; only float32, uint8- or uint16-quantised are supported",
                    manifest.display(),
                    e.name,
                    q.as_ref()
                        .map(|q| format!(" quantised as {}", q.dtype))
                        .unwrap_or_default()
                ),
            };
            let len = n as usize * width;
            if at + len > bytes.len() {
                bail!(
                    "{shards} is truncated: tensor {} needs bytes {at}..{} but the data has {}",
                    e.name,
                    at + len,
                    bytes.len()
                );
            }
            let (scale, min) = e.quantization.as_ref().map_or((1.0, 0.0), |q| (q.scale, q.min));
            let values: Vec<f32> = bytes[at..at + len]
                .chunks_exact(width)
                .map(|b| (decode(b) * scale + min) as f32)
                .collect();
            at += len;
            let t = Tensor::from_slice(&values).view(e.shape.as_slice());
            // TF convolution filters are [kh, kw, in, out]; torch wants [out, in, kh, kw].
            let t = if e.shape.len() == 4 {
                t.permute([3, 2, 0, 1]).contiguous()
            } else {
                t
            };
            out.insert(e.name.replace('/', "."), t);
        }
        if at != bytes.len() {
            bail!(
                "{shards} has {} bytes after the last tensor the manifest names: manifest and weights disagree",
                bytes.len() - at
            );
        }
    }
    Ok(out)
}

/// Converts a TF.js model into a safetensors file that `model` loads; returns the tensor count.
pub fn import(model: &str, manifest: &Path, output: &Path) -> Result<usize> {
    let tensors = read(manifest)?;
    let vs = crate::BaseModel::new(model, tch::Device::Cpu)?;
    check_against(vs.var_store(), &tensors, manifest)?;
    let n = tensors.len();
    write_atomic(&tensors.into_iter().collect::<Vec<_>>(), output)?;
    Ok(n)
}

/// sha256 over the manifest and its shards: names a conversion of exactly these weights.
pub fn fingerprint(manifest: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let text = std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let groups: Vec<Group> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a TF.js weights manifest", manifest.display()))?;
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let mut h = Sha256::new();
    h.update(&text);
    for p in groups.iter().flat_map(|g| &g.paths) {
        h.update(crate::weights::sha256_file(&crate::files::file_in(dir, p)?)?);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `dir/<model>-<hash>.safetensors`: the embedding weights in `face` plus the classifier in
/// `classifier` (`classifier.weight`, `classifier.bias`), checked against `model`.
pub fn with_classifier(model: &str, face: &Path, classifier: &Path, dir: &Path) -> Result<std::path::PathBuf> {
    use sha2::{Digest, Sha256};
    if !classifier.is_file() {
        bail!(
            "{model} needs its classifier {} (written by `gati fit-classifier`)",
            classifier.display()
        );
    }
    let mut h = Sha256::new();
    h.update(crate::weights::sha256_file(face)?);
    h.update(crate::weights::sha256_file(classifier)?);
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let dst = dir.join(format!("{model}-{}.safetensors", &hash[..12]));
    if !dst.is_file() {
        let mut tensors = crate::weights::read(face)?;
        tensors.extend(crate::weights::read(classifier)?);
        let vs = crate::BaseModel::new(model, tch::Device::Cpu)?;
        check_against(vs.var_store(), &tensors, classifier)?;
        write_atomic(&tensors.into_iter().collect::<Vec<_>>(), &dst)?;
    }
    Ok(dst)
}
