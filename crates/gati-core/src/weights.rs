//! Model parameters in safetensors: strict loading (every key present, no stray keys, every shape
//! right, all named in the error) and import from PyTorch checkpoints through the virtualenv's torch.

use crate::files::{tmp_sibling, write_atomic};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn::VarStore, Tensor};

/// Loads every variable of `vs` from `path`, refusing missing, unexpected or mis-shaped keys.
pub fn load_into(vs: &mut VarStore, path: &Path) -> Result<()> {
    let tensors = read(path)?;
    check_against(vs, &tensors, path)?;
    copy_into(vs, &tensors);
    Ok(())
}

/// Copies checked tensors into the variables of the same names.
fn copy_into(vs: &VarStore, tensors: &BTreeMap<String, Tensor>) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in tensors {
            let mut dst = vars[name].shallow_clone();
            dst.copy_(&t.to_kind(dst.kind()).to_device(dst.device()));
        }
    });
}

/// Loads the variables of `vs` from a file that may hold more (e.g. one cache worker's share of a
/// plan's caches); missing or mis-shaped keys are still refused.
pub fn load_subset(vs: &mut VarStore, path: &Path) -> Result<()> {
    let all = read(path)?;
    let vars = vs.variables();
    let wanted: BTreeMap<String, Tensor> = all.into_iter().filter(|(k, _)| vars.contains_key(k)).collect();
    check_against(vs, &wanted, path)?;
    copy_into(vs, &wanted);
    Ok(())
}

/// Reads a safetensors file into a name-ordered map.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    let list = Tensor::read_safetensors(path)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    Ok(list.into_iter().collect())
}

/// Compares a set of named tensors with the variables of `vs`; the error names every offending key.
pub fn check_against(vs: &VarStore, tensors: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let missing: Vec<&str> = vars
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .map(String::as_str)
        .collect();
    let unexpected: Vec<&str> = tensors
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .map(String::as_str)
        .collect();
    let misshaped: Vec<String> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let want = vars.get(k)?.size();
            (t.size() != want).then(|| format!("{k} (file {:?}, model {:?})", t.size(), want))
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing keys [{}]", list(&missing)));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected keys [{}]", list(&unexpected)));
    }
    if !misshaped.is_empty() {
        problems.push(format!("mis-shaped keys [{}]", list(&misshaped)));
    }
    if !problems.is_empty() {
        bail!("{} does not match the model: {}", origin.display(), problems.join("; "));
    }
    Ok(())
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    const SHOWN: usize = 8;
    let mut s = items
        .iter()
        .take(SHOWN)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", ... {} more", items.len() - SHOWN));
    }
    s
}

/// Hex sha256 of a file (plans record which weights they were trained against).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The Python interpreter of the project virtualenv (recorded by `scripts/setup.sh` at build
/// time), overridable with `GATI_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("GATI_PYTHON")
        .map(PathBuf::from)
        .or_else(|| option_env!("GATI_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

const CONVERT_PY: &str = include_str!("../py/torch_to_safetensors.py");

/// Converts a PyTorch checkpoint (`.th`/`.pth`/`.pt`: a state dict, `{'state_dict': ...}` or
/// `{'model': ...}`, keys possibly prefixed `module.`) into a safetensors file that `model` loads.
pub fn import_pytorch(model: &str, input: &Path, output: &Path) -> Result<usize> {
    if !input.is_file() {
        bail!("checkpoint {} does not exist", input.display());
    }
    let raw = tmp_sibling(output).with_extension("raw.safetensors");
    let out = Command::new(python())
        .arg("-c")
        .arg(CONVERT_PY)
        .arg(input)
        .arg(&raw)
        .output()
        .with_context(|| format!("running {} (run scripts/setup.sh first)", python().display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&raw);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        bail!("converting {}: {last}", input.display());
    }
    let result = (|| {
        let tensors = read(&raw)?;
        let vs = crate::BaseModel::new(model, tch::Device::Cpu)?;
        check_against(vs.var_store(), &tensors, input)?;
        let n = tensors.len();
        write_atomic(&tensors.into_iter().collect::<Vec<_>>(), output)?;
        Ok(n)
    })();
    let _ = std::fs::remove_file(&raw);
    result
}
