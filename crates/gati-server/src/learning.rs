//! What the serving roles share for online learning: the sample buffer of the base worker, cache
//! versions on the wire, and the version a worker serves when it starts.

use crate::config::Cluster;
use anyhow::{bail, Result};
use gati_cache::runtime::{CacheState, EarlyExit, Hooks};
use gati_cache::versions::{self, VersionStore};
use gati_rpc::convert::{tensor_from_wire, tensor_to_wire};
use gati_rpc::{CacheUpdate, CacheVersion, InvalidInput, Sample};
use std::collections::VecDeque;
use tch::Tensor;

/// One complete run, as kept by the base worker until the trainer takes it.
pub struct Collected {
    pub acts: Vec<Tensor>,
    pub logits: Vec<f32>,
    pub uniform: bool,
}

impl Collected {
    fn bytes(&self) -> usize {
        4 * (self.acts.iter().map(|t| t.numel()).sum::<usize>() + self.logits.len())
    }

    pub fn to_wire(&self) -> Sample {
        Sample {
            activations: self.acts.iter().map(tensor_to_wire).collect(),
            logits: self.logits.iter().map(|&v| thrift::OrderedFloat(v as f64)).collect(),
            uniform: self.uniform,
        }
    }
}

/// A sample with its activation at every cache's stage and the base model's logits `[1, classes]`:
/// as sent, or, for an inline hit that stopped at its cache (no logits), with the rest of the base
/// model run from its last activation.
pub fn complete_sample(ee: &EarlyExit, mut acts: Vec<Tensor>, logits: &[f32]) -> Result<(Vec<Tensor>, Tensor)> {
    let stages: Vec<usize> = ee.caches.iter().map(|c| c.stage).collect();
    let m = &ee.model;
    if !logits.is_empty() {
        if acts.len() != stages.len() || logits.len() as i64 != m.spec().num_classes {
            bail!(
                "sample with {} activations and {} logits, expected {} and {}",
                acts.len(),
                logits.len(),
                stages.len(),
                m.spec().num_classes
            );
        }
        return Ok((acts, Tensor::from_slice(logits).view([1, -1])));
    }
    let Some(last) = acts.last() else {
        bail!("sample with neither activations nor logits");
    };
    if acts.len() > stages.len() {
        bail!("sample with {} activations for {} caches", acts.len(), stages.len());
    }
    let from = stages[acts.len() - 1];
    if last.size() != m.stages()[from].output_shape || last.kind() != tch::Kind::Float {
        bail!(
            "partial sample ends with a {:?} {:?} activation; stage {from} outputs {:?} float",
            last.kind(),
            last.size(),
            m.stages()[from].output_shape
        );
    }
    let mut rest = Completing {
        stages: stages[acts.len()..].to_vec(),
        acts: Vec::new(),
    };
    let walked = ee.walk(last, from + 1, &mut rest).pop().expect("one sample");
    acts.extend(rest.acts);
    Ok((acts, walked.logits.expect("ran to the end").unsqueeze(0)))
}

/// Completing a sample: the remaining stages without cache answers, keeping the activations at
/// the sampled stages.
struct Completing {
    stages: Vec<usize>,
    acts: Vec<Tensor>,
}

impl Hooks for Completing {
    fn consult_caches(&self) -> bool {
        false
    }

    fn after_stage(&mut self, k: usize, h: &Tensor, _rows: &[usize], _took: std::time::Duration) {
        if self.stages.contains(&k) {
            self.acts.push(h.shallow_clone());
        }
    }
}

/// The newest samples within a memory cap; the oldest are evicted first.
pub struct SampleRing {
    cap_bytes: usize,
    bytes: usize,
    items: VecDeque<Collected>,
}

impl SampleRing {
    pub fn new(cap_mb: f64) -> Self {
        Self {
            cap_bytes: (cap_mb * 1048576.0) as usize,
            bytes: 0,
            items: VecDeque::new(),
        }
    }

    /// Adds a sample; returns how many old ones were evicted to make room.
    pub fn push(&mut self, s: Collected) -> usize {
        self.bytes += s.bytes();
        self.items.push_back(s);
        let mut evicted = 0;
        while self.bytes > self.cap_bytes && self.items.len() > 1 {
            let old = self.items.pop_front().expect("non-empty");
            self.bytes -= old.bytes();
            evicted += 1;
        }
        evicted
    }

    /// Removes and returns up to `max` samples, newest first.
    pub fn take(&mut self, max: usize) -> Vec<Collected> {
        let n = max.min(self.items.len());
        let taken = self.items.split_off(self.items.len() - n);
        self.bytes -= taken.iter().map(Collected::bytes).sum::<usize>();
        taken.into_iter().rev().collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn invalid(message: String) -> InvalidInput {
    InvalidInput { message }
}

pub fn version_to_wire(version: &str, states: &[CacheState]) -> CacheVersion {
    CacheVersion {
        version: version.to_string(),
        caches: states
            .iter()
            .map(|s| CacheUpdate {
                layer: s.layer.clone(),
                params: s.params.iter().map(|(k, t)| (k.clone(), tensor_to_wire(t))).collect(),
                decision_json: serde_json::to_string(&s.decision).expect("decision serialises"),
                enabled: s.enabled,
            })
            .collect(),
    }
}

/// A checked version from the wire: a version name, known layers only, tensors and decisions
/// that decode (shapes are checked against the served caches by `EarlyExit::install`).
pub fn version_from_wire(v: &CacheVersion, planned: &[String]) -> Result<Vec<CacheState>, InvalidInput> {
    versions::parse_name(&v.version).map_err(|e| invalid(format!("version: {e:#}")))?;
    v.caches
        .iter()
        .map(|u| {
            if !planned.contains(&u.layer) {
                return Err(invalid(format!(
                    "version {}: layer '{}' has no cache in the plan",
                    v.version, u.layer
                )));
            }
            let params = u
                .params
                .iter()
                .map(|(k, t)| Ok((k.clone(), tensor_from_wire(t)?)))
                .collect::<Result<Vec<_>, InvalidInput>>()?;
            let decision = serde_json::from_str(&u.decision_json)
                .map_err(|e| invalid(format!("version {}: layer '{}': decision: {e}", v.version, u.layer)))?;
            Ok(CacheState {
                layer: u.layer.clone(),
                params,
                decision,
                enabled: u.enabled,
            })
        })
        .collect()
}

/// Installs `states` into `ee`, requiring one for each of its caches.
pub fn install_all(ee: &mut EarlyExit, version: &str, states: &[CacheState]) -> Result<(), InvalidInput> {
    for c in &ee.caches {
        if !states.iter().any(|s| s.layer == c.layer) {
            return Err(invalid(format!(
                "version {version} has no cache for layer '{}'",
                c.layer
            )));
        }
    }
    ee.install(states)
        .map(|_| ())
        .map_err(|e| invalid(format!("version {version}: {e:#}")))
}

/// The version a worker serves when it starts: with online learning on, the one its state folder
/// says to serve; otherwise (or when that is version 0) the plan's own caches.
pub struct StartVersion {
    pub name: String,
    /// Empty for version 0 (the caches loaded from the plan already are it).
    states: Vec<CacheState>,
    dir: Option<std::path::PathBuf>,
}

impl StartVersion {
    /// The plan's own caches (version 0).
    pub fn plan() -> Self {
        Self {
            name: versions::name(0),
            states: Vec::new(),
            dir: None,
        }
    }

    pub fn read(cluster: &Cluster) -> Result<Self> {
        let Some(dir) = cluster.state_dir() else {
            return Ok(Self::plan());
        };
        if !dir.join("versions.json").exists() {
            return Ok(Self::plan());
        }
        let store = VersionStore::open(&cluster.plan, &dir)?;
        let idx = store.index()?;
        if idx.serving == 0 {
            return Ok(Self::plan());
        }
        let states = store.states(&idx, idx.serving)?;
        if states.is_empty() {
            bail!("version {} has no caches", idx.serving);
        }
        Ok(Self {
            name: versions::name(idx.serving),
            states,
            dir: Some(dir),
        })
    }

    /// Installs this version into freshly loaded plan caches.
    pub fn install(&self, ee: &mut EarlyExit) -> Result<()> {
        if self.states.is_empty() {
            return Ok(());
        }
        install_all(ee, &self.name, &self.states)
            .map_err(|e| anyhow::anyhow!("serving {} from {:?}: {}", self.name, self.dir, e.message))
    }
}

/// A version name as a number, for the `gati_serving_version` gauge.
pub fn version_number(name: &str) -> i64 {
    versions::parse_name(name).unwrap_or(0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(floats: i64) -> Collected {
        Collected {
            acts: vec![Tensor::zeros([floats], (tch::Kind::Float, tch::Device::Cpu))],
            logits: Vec::new(),
            uniform: false,
        }
    }

    #[test]
    fn the_sample_ring_keeps_the_newest_within_its_cap_and_hands_them_out_newest_first() {
        // 1 MB cap; 100,000 floats = 400,000 bytes per sample: two fit, a third evicts the oldest.
        let mut r = SampleRing::new(1.0);
        assert_eq!(r.push(sample(100_000)), 0);
        assert_eq!(r.push(sample(100_001)), 0);
        assert_eq!(r.push(sample(100_002)), 1);
        assert_eq!(r.bytes(), 4 * (100_001 + 100_002));
        let taken = r.take(1);
        assert_eq!(taken[0].acts[0].numel(), 100_002, "newest first");
        assert_eq!(r.bytes(), 4 * 100_001);
        // One sample larger than the cap is still kept (the trainer may want it) until the next.
        assert_eq!(r.push(sample(1_000_000)), 1);
        assert_eq!(r.push(sample(10)), 1);
        assert_eq!(r.take(10).len(), 1);
        assert_eq!(r.bytes(), 0);
    }
}
