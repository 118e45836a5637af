//! Where data, checkpoints and converted weights live.
//!
//! Search order for inputs: explicit flag or environment variable, then `../shared/` beside the
//! project (or `$GATI_SHARED`), then the project's own `datasets/` (filled by `datasets/fetch.sh`).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The project root: the unpacked release this binary runs from (`scripts/package.sh`: a folder
/// with `GATI_RELEASE` above `bin/`), else the source tree it was built from (used to find
/// `models/`, `../shared` and `datasets/`).
pub fn project_root() -> PathBuf {
    let release = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
        .filter(|r| r.join("GATI_RELEASE").is_file());
    release.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from("."))
    })
}

/// The shared data folder: `$GATI_SHARED`, else `../shared` beside the working directory or the project.
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATI_SHARED") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = vec![project_root().join("../shared")];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("../shared"));
        candidates.push(cwd.join("shared"));
    }
    candidates
        .into_iter()
        .find(|p| p.join("README.md").is_file() || p.join("datasets").is_dir())
}

/// The CIFAR-10 dataset folder: `$GATI_DATA`, shared JPEGs, or `datasets/` (binary or image folder).
pub fn cifar10_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("GATI_DATA") {
        return Ok(PathBuf::from(p));
    }
    if let Some(s) = shared_dir() {
        tried.push(s.join("datasets/cifar10-jpeg"));
    }
    let local = project_root().join("datasets");
    tried.push(local.join("cifar-10-batches-bin"));
    tried.push(local.join("cifar10"));
    for p in &tried {
        if p.join("test").is_dir() || p.join("test_batch.bin").is_file() {
            return Ok(p.clone());
        }
    }
    bail!(
        "no CIFAR-10 data found; tried {}. Pass --data DIR, set GATI_DATA, put the shared data at ../shared/, \
         or run datasets/fetch.sh cifar10 on a machine with internet access",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Face models (`face-resnet`, `face-lfw62`) read LFW and the TF.js face weights.
pub fn is_face_model(model: &str) -> bool {
    model.starts_with("face-")
}

/// `given`, or `model`'s default dataset: LFW for face models, CIFAR-10 otherwise.
pub fn data_dir_for(model: &str, given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None if is_face_model(model) => lfw_dir(),
        None => cifar10_dir(),
    }
}

/// The LFW folder (`images/<Name>/*.jpg` + `pairs.txt`): shared, then `datasets/lfw`.
pub fn lfw_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(s) = shared_dir() {
        tried.push(s.join("datasets/lfw"));
    }
    tried.push(project_root().join("datasets/lfw"));
    for p in &tried {
        if crate::data::lfw::looks_like_lfw(p) {
            return Ok(p.clone());
        }
    }
    bail!(
        "no LFW found; tried {}. Pass --data DIR (a folder with images/<Name>/*.jpg and pairs.txt)",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The committed weights of a base model fine-tuned by the project (`resnetNN-jpeg`,
/// `resnetNN-jpeg-exits`, `resnetNN-jpeg-frames`, `resnet20-jpeg-kd56`).
pub fn fine_tuned_weights(model: &str) -> Option<PathBuf> {
    ["-jpeg", "-jpeg-exits", "-jpeg-frames", "-jpeg-kd56"]
        .iter()
        .any(|suffix| model.ends_with(suffix))
        .then(|| project_root().join("models").join(model).join("weights.safetensors"))
}

/// The adapter that `student` (a smaller base, e.g. `resnet20-jpeg-kd56`) was distilled through
/// from `teacher`'s stem, committed beside its weights as `adapter-<teacher>.safetensors`; `None`
/// where there is none (a student of another base fits its own).
pub fn student_adapter(student: &str, teacher: &str) -> Option<PathBuf> {
    let weights = fine_tuned_weights(student)?;
    Some(weights.with_file_name(format!("adapter-{teacher}.safetensors"))).filter(|p| p.is_file())
}

/// The identification classifier of `face-lfw62` (`gati fit-classifier` writes it; committed).
pub fn face_classifier() -> PathBuf {
    project_root().join("models/face-lfw62/classifier.safetensors")
}

/// The lossless PNG fixtures (`cifar10-png`) in the shared folder, if present.
pub fn cifar10_png_dir() -> Option<PathBuf> {
    shared_dir()
        .map(|s| s.join("datasets/cifar10-png"))
        .filter(|p| p.is_dir())
}

/// The pretrained PyTorch checkpoint for a CIFAR ResNet (`resnet56-*.th`), if one can be found.
/// Model names become parts of file names: only the known architectures' names are accepted, so
/// a name can never address a file outside the weights folders.
fn known_model(model: &str) -> Result<()> {
    if !crate::models::MODEL_NAMES.contains(&model) {
        anyhow::bail!(
            "unknown model '{model}' (known: {})",
            crate::models::MODEL_NAMES.join(", ")
        );
    }
    Ok(())
}

pub fn checkpoint(model: &str) -> Result<PathBuf> {
    known_model(model)?;
    if is_face_model(model) {
        let manifest = shared_dir()
            .unwrap_or_else(|| project_root().join("datasets"))
            .join("weights/face-resnet/face_recognition_model-weights_manifest.json");
        if !manifest.is_file() {
            bail!(
                "no face weights at {}; pass --weights (a TF.js manifest or .safetensors)",
                manifest.display()
            );
        }
        return Ok(manifest);
    }
    if let Some(w) = fine_tuned_weights(model) {
        if !w.is_file() {
            bail!(
                "no weights for {model} at {}; run scripts/finetune-bases.sh or pass --weights",
                w.display()
            );
        }
        return Ok(w);
    }
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os("GATI_WEIGHTS_DIR") {
        dirs.push(PathBuf::from(p));
    }
    if let Some(s) = shared_dir() {
        dirs.push(s.join("weights/resnet-cifar10"));
    }
    dirs.push(project_root().join("datasets/weights"));
    for d in &dirs {
        if let Ok(rd) = std::fs::read_dir(d) {
            let mut hits: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    n.starts_with(&format!("{model}-")) || n.starts_with(&format!("{model}."))
                })
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("th" | "pth" | "pt" | "safetensors")
                    )
                })
                .collect();
            hits.sort();
            if let Some(h) = hits.into_iter().next() {
                return Ok(h);
            }
        }
    }
    bail!(
        "no weights for {model} found in {}; pass --weights FILE (.safetensors or a PyTorch .th/.pth)",
        dirs.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// gati's own cache folder (converted weights): `$GATI_HOME`, else `~/.cache/gati`.
pub fn home() -> PathBuf {
    if let Some(p) = std::env::var_os("GATI_HOME") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gati")
}

/// Safetensors weights for `model` from `given` (or the default checkpoint), converting a PyTorch
/// checkpoint or TF.js manifest once into `home()/weights/` and reusing it afterwards.
pub fn resolve_weights(model: &str, given: Option<&Path>) -> Result<PathBuf> {
    known_model(model)?;
    let src = match given {
        Some(p) => p.to_path_buf(),
        None => checkpoint(model)?,
    };
    if src.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        return Ok(src);
    }
    convert_cached(model, &src, &home().join("weights"))
}

/// Converts a PyTorch checkpoint or a TF.js manifest (`.json`) into
/// `dir/<model>-<sha256 prefix>.safetensors` unless already there. `face-lfw62` from the TF.js
/// face weights gets the committed classifier (`face_classifier()`) added.
pub fn convert_cached(model: &str, src: &Path, dir: &Path) -> Result<PathBuf> {
    known_model(model)?;
    let tfjs = src.extension().and_then(|e| e.to_str()) == Some("json");
    if tfjs && model == "face-lfw62" {
        let face = convert_cached("face-resnet", src, dir)?;
        return crate::tfjs::with_classifier(model, &face, &face_classifier(), dir);
    }
    let hash = if tfjs {
        crate::tfjs::fingerprint(src)?
    } else {
        crate::weights::sha256_file(src)?
    };
    std::fs::create_dir_all(dir)?;
    let dst = dir.join(format!("{model}-{}.safetensors", &hash[..12]));
    if !dst.is_file() {
        eprintln!("converting {} -> {}", src.display(), dst.display());
        if tfjs {
            crate::tfjs::import(model, src, &dst)?;
        } else {
            crate::weights::import_pytorch(model, src, &dst)?;
        }
    }
    Ok(dst)
}
