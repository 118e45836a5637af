//! Files written so that a reader never sees a half-written one: atomic writes (temporary file,
//! fsync, rename, fsync of the folder), content-named files that an index written after them
//! switches to in one rename, and the clean-up of the files no index names any more.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

use crate::weights::sha256_file;

/// Writes named tensors as safetensors atomically (temporary file, fsync, rename).
pub fn write_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = tmp_sibling(path);
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_kind(Kind::Float).contiguous()))
        .collect();
    Tensor::write_safetensors(&contiguous, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    rename_durable(&tmp, path)
}

/// Writes `tensors` into folder `dir` as `{stem}-{sha256 prefix}.safetensors` (atomically) and
/// returns that file name. A file that names it (written after, atomically) then switches to the
/// new tensors in one rename, and an interrupted writer never leaves a file in use half-written.
pub fn write_content_named(dir: &Path, stem: &str, tensors: &[(String, Tensor)]) -> Result<String> {
    let tmp = tmp_sibling(&dir.join(format!("{stem}.safetensors")));
    write_atomic(tensors, &tmp)?;
    let name = format!("{stem}-{}.safetensors", &sha256_file(&tmp)?[..16]);
    rename_durable(&tmp, &dir.join(&name))?;
    Ok(name)
}

/// Removes `{stem}-*.safetensors` files in `dir` but the current one and the previous one (a
/// reader that read the previous index file just before it was replaced can still open it).
pub fn remove_stale(dir: &Path, stem: &str, current: &str, previous: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("{stem}-")) && name.ends_with(".safetensors");
        if ours && name != current && Some(name.as_str()) != previous {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `name` as read from an index file (plan.json, meta.json): it must be a plain file name in
/// `dir`, never a path that leaves it.
pub fn file_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => Ok(dir.join(name)),
        _ => anyhow::bail!("'{name}' must be a file name in {}", dir.display()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsynced, renamed over `path`, and the
/// folder fsynced, so a crash leaves either the old file or the new one, never a torn one.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_sibling(path);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()?;
    rename_durable(&tmp, path)
}

fn rename_durable(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The rename itself is durable only once the folder's entry is on disk.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A unique temporary name beside `path` (same file system, so a rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{k}.tmp", std::process::id()))
}

/// Pretty JSON, written atomically.
pub fn write_json_atomic<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    write_bytes_atomic(path, &serde_json::to_vec_pretty(value)?)
}
