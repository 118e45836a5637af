//! Cache versions kept by online learning, under `PLAN_DIR/online/` (or another state folder):
//! `versions.json` (the index: every version's decisions, which one serves, pin, pause) and one
//! content-named `caches-<sha>.safetensors` per learned version. Version 0 is the plan itself.
//!
//! A new version's weights are written first (temporary file, fsync, rename), the index last (the
//! same way): a crash at any point leaves the previous index naming complete files.

use crate::decision::Decision;
use crate::plan::Plan;
use crate::runtime::CacheState;
use anyhow::{bail, Context, Result};
use gati_core::files::write_json_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::Tensor;

/// Learned versions kept besides the serving and pinned ones (older ones are deleted).
const KEEP: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    pub id: u64,
    /// The weights file in the state folder; `None` for version 0 (the plan's own file).
    pub caches_file: Option<String>,
    /// Decision per layer.
    pub decisions: BTreeMap<String, Decision>,
    /// Layers switched off by the accuracy guard.
    pub disabled: Vec<String>,
    pub created_unix: u64,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionIndex {
    pub serving: u64,
    pub pinned: Option<u64>,
    pub paused: bool,
    /// Oldest first; always starts with version 0.
    pub versions: Vec<VersionRecord>,
}

impl VersionIndex {
    pub fn get(&self, id: u64) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The version listed before `id`.
    pub fn before(&self, id: u64) -> Option<u64> {
        let i = self.versions.iter().position(|v| v.id == id)?;
        Some(self.versions[i.checked_sub(1)?].id)
    }
}

/// "v3" for version 3.
pub fn name(id: u64) -> String {
    format!("v{id}")
}

/// The id in a version name ("v3" or "3").
pub fn parse_name(s: &str) -> Result<u64> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse()
        .with_context(|| format!("'{s}' is not a version name (v0, v1, ...)"))
}

pub struct VersionStore {
    pub dir: PathBuf,
    plan_dir: PathBuf,
    plan: Plan,
    /// Fault injection for tests: sleep this long between the steps of writing a version.
    pub write_delay: Duration,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VersionStore {
    /// The store of `plan` (in `plan_dir`) in folder `dir` (created if missing).
    pub fn open(plan_dir: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            plan_dir: plan_dir.to_path_buf(),
            plan: Plan::load(plan_dir)?,
            write_delay: Duration::ZERO,
        })
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("versions.json")
    }

    /// The index; a folder without one has only version 0, serving.
    pub fn index(&self) -> Result<VersionIndex> {
        let path = self.index_path();
        if !path.exists() {
            return Ok(VersionIndex {
                serving: 0,
                pinned: None,
                paused: false,
                versions: vec![VersionRecord {
                    id: 0,
                    caches_file: None,
                    decisions: self
                        .plan
                        .caches
                        .iter()
                        .map(|c| (c.layer.clone(), c.decision.clone()))
                        .collect(),
                    disabled: vec![],
                    created_unix: now_unix(),
                    note: "plan".into(),
                }],
            });
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let idx: VersionIndex =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
        if idx.get(idx.serving).is_none() {
            bail!("{}: serving version {} is not listed", path.display(), idx.serving);
        }
        for v in &idx.versions {
            if let Some(f) = &v.caches_file {
                gati_core::files::file_in(&self.dir, f)
                    .with_context(|| format!("{}: version {}", path.display(), v.id))?;
            }
        }
        Ok(idx)
    }

    pub fn save_index(&self, idx: &VersionIndex) -> Result<()> {
        write_json_atomic(idx, &self.index_path())
    }

    /// Writes `states` as a new version, makes it the serving one, and prunes old versions.
    pub fn add(&self, idx: &mut VersionIndex, states: &[CacheState], note: &str) -> Result<u64> {
        let mut tensors = Vec::new();
        for s in states {
            let c = self.planned(&s.layer)?;
            for (k, t) in &s.params {
                tensors.push((format!("{}.{k}", c.key), t.shallow_clone()));
            }
        }
        let file = gati_core::files::write_content_named(&self.dir, "caches", &tensors)?;
        std::thread::sleep(self.write_delay);
        let id = idx.versions.iter().map(|v| v.id).max().unwrap_or(0) + 1;
        idx.versions.push(VersionRecord {
            id,
            caches_file: Some(file),
            decisions: states.iter().map(|s| (s.layer.clone(), s.decision.clone())).collect(),
            disabled: states.iter().filter(|s| !s.enabled).map(|s| s.layer.clone()).collect(),
            created_unix: now_unix(),
            note: note.into(),
        });
        idx.serving = id;
        let learned: Vec<u64> = idx.versions.iter().map(|v| v.id).filter(|&v| v != 0).collect();
        let drop: Vec<u64> = learned
            .iter()
            .copied()
            .take(learned.len().saturating_sub(KEEP))
            .filter(|&v| Some(v) != idx.pinned)
            .collect();
        idx.versions.retain(|v| !drop.contains(&v.id));
        self.save_index(idx)?;
        self.remove_unlisted(idx);
        Ok(id)
    }

    /// Deletes weights files (and temporary files) that no version names.
    fn remove_unlisted(&self, idx: &VersionIndex) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let listed = idx
                .versions
                .iter()
                .any(|v| v.caches_file.as_deref() == Some(name.as_str()));
            if name.starts_with("caches") && name.ends_with(".safetensors") && !listed {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn planned(&self, layer: &str) -> Result<&crate::plan::PlannedCache> {
        self.plan
            .caches
            .iter()
            .find(|c| c.layer == layer)
            .with_context(|| format!("layer '{layer}' has no cache in the plan"))
    }

    /// The caches' states in version `id`.
    pub fn states(&self, idx: &VersionIndex, id: u64) -> Result<Vec<CacheState>> {
        let Some(v) = idx.get(id) else {
            bail!("version {} does not exist", name(id));
        };
        let path = match &v.caches_file {
            Some(f) => gati_core::files::file_in(&self.dir, f)?,
            None => self.plan.caches_path(&self.plan_dir),
        };
        let mut tensors = gati_core::weights::read(&path)?;
        let mut states = Vec::new();
        for c in &self.plan.caches {
            let prefix = format!("{}.", c.key);
            let keys: Vec<String> = tensors.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            let params: Vec<(String, Tensor)> = keys
                .into_iter()
                .map(|k| {
                    let t = tensors.remove(&k).expect("listed");
                    (k[prefix.len()..].to_string(), t)
                })
                .collect();
            if params.is_empty() {
                bail!("{}: no parameters for cache '{}'", path.display(), c.layer);
            }
            states.push(CacheState {
                layer: c.layer.clone(),
                params,
                decision: v.decisions.get(&c.layer).cloned().unwrap_or_else(|| c.decision.clone()),
                enabled: !v.disabled.contains(&c.layer),
            });
        }
        Ok(states)
    }
}
