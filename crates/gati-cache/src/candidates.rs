//! Candidate caches: every (layer, variant) head in one VarStore, their measured cost, and their
//! recorded outcomes on the calibration and evaluation halves. Kept on disk so that planning
//! again with another budget or mode does not retrain.

use crate::heads::{head_key, CacheHead, Variant};
use crate::outcomes::Outcomes;
use anyhow::{bail, Context, Result};
use gati_core::BaseModel;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct HeadEntry {
    pub layer: String,
    pub stage: usize,
    pub variant: Variant,
    pub key: String,
    pub params: i64,
    pub head: CacheHead,
}

/// All candidate heads of one base model.
pub struct HeadBank {
    pub vs: nn::VarStore,
    pub heads: Vec<HeadEntry>,
}

impl HeadBank {
    /// Fresh heads for every `variant` at every stage in `stages` (ascending).
    pub fn new(model: &BaseModel, stages: &[usize], variants: &[Variant]) -> Result<Self> {
        let vs = nn::VarStore::new(model.device());
        let classes = model.spec().num_classes;
        let mut heads = Vec::new();
        for &s in stages {
            let info = model.stages().get(s).with_context(|| format!("no stage {s}"))?;
            let shape = &info.output_shape;
            if shape.len() != 4 {
                bail!(
                    "stage {} has output shape {:?}; caches attach to 4-d activations",
                    info.name,
                    shape
                );
            }
            for &v in variants {
                let key = head_key(&info.name, v);
                let before: i64 = param_count(&vs);
                // One optimizer group per head, so each gets its own learning rate.
                let path = vs.root().set_group(heads.len()) / key.as_str();
                let head = CacheHead::new(&path, v, [shape[1], shape[2], shape[3]], classes);
                let params = param_count(&vs) - before;
                heads.push(HeadEntry {
                    layer: info.name.clone(),
                    stage: s,
                    variant: v,
                    key,
                    params,
                    head,
                });
            }
        }
        Ok(Self { vs, heads })
    }

    /// Distinct stages that carry heads, ascending.
    pub fn stages(&self) -> Vec<usize> {
        let mut s: Vec<usize> = self.heads.iter().map(|h| h.stage).collect();
        s.dedup();
        s
    }

    /// Every head's parameters, by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        gati_core::weights::load_into(&mut self.vs, path)
    }

    /// Median batch-1 latency of each head in ms (inference mode, current thread count).
    pub fn measure_costs(&self, model: &BaseModel, runs: usize) -> Vec<f64> {
        let _g = tch::no_grad_guard();
        self.heads
            .iter()
            .map(|h| {
                let shape = &model.stages()[h.stage].output_shape;
                let x = Tensor::rand(shape.as_slice(), (Kind::Float, model.device()));
                for _ in 0..5 {
                    let _ = h.head.forward_t(&x, false).softmax(-1, Kind::Float);
                }
                let mut t: Vec<f64> = (0..runs)
                    .map(|_| {
                        let t0 = Instant::now();
                        let _ = h.head.forward_t(&x, false).softmax(-1, Kind::Float);
                        t0.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect()
    }
}

/// Trainable parameter count (BatchNorm running statistics excluded).
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// What planning needs about the candidates, stored as `candidates/meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateMeta {
    pub model: String,
    /// The calibration/evaluation rule the outcomes were recorded under (`split::SPLIT_RULE`).
    #[serde(default)]
    pub split: String,
    pub weights_sha256: String,
    pub variants: Vec<Variant>,
    pub stages: Vec<usize>,
    pub train: crate::train::TrainConfig,
    pub train_seconds: f64,
    pub train_fidelity: Vec<f64>,
    pub heads: Vec<HeadMeta>,
    /// The heads' and outcomes' files, content-named (absent in older sets: the fixed names).
    #[serde(default)]
    pub files: Option<CandidateFiles>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateFiles {
    pub heads: String,
    pub outcomes: String,
}

impl CandidateFiles {
    fn legacy() -> Self {
        Self {
            heads: "heads.safetensors".into(),
            outcomes: "outcomes.safetensors".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadMeta {
    pub layer: String,
    pub stage: usize,
    pub variant: Variant,
    pub key: String,
    pub params: i64,
}

/// A trained candidate set on disk: `meta.json` and the heads' and outcomes' files it names, so that
/// replacing meta.json (last, atomically) switches all three together.
pub struct Candidates {
    pub meta: CandidateMeta,
    pub bank: HeadBank,
    pub calibration: Outcomes,
    pub evaluation: Outcomes,
}

impl Candidates {
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let previous = read_meta(dir).ok().and_then(|m| m.files);
        let heads = gati_core::weights::write_content_named(dir, "heads", &self.bank.tensors())?;
        let mut t = self.calibration.to_tensors("calibration");
        t.extend(self.evaluation.to_tensors("evaluation"));
        let outcomes = gati_core::weights::write_content_named(dir, "outcomes", &t)?;
        let mut meta = self.meta.clone();
        meta.files = Some(CandidateFiles { heads, outcomes });
        crate::plan::write_json_atomic(&meta, &dir.join("meta.json"))?;
        let (files, old) = (meta.files.as_ref().expect("set above"), previous.as_ref());
        gati_core::weights::remove_stale(dir, "heads", &files.heads, old.map(|f| f.heads.as_str()));
        gati_core::weights::remove_stale(dir, "outcomes", &files.outcomes, old.map(|f| f.outcomes.as_str()));
        Ok(())
    }

    /// Loads a candidate set trained for `model` (with these weights); `None` if absent.
    pub fn load(dir: &Path, model: &BaseModel, weights_sha256: &str) -> Result<Option<Self>> {
        if !dir.join("meta.json").is_file() {
            return Ok(None);
        }
        let meta = read_meta(dir)?;
        let files = meta.files.clone().unwrap_or_else(CandidateFiles::legacy);
        if meta.model != model.spec().name || meta.weights_sha256 != weights_sha256 {
            bail!(
                "{} was trained for {} with weights {}, not {} with {}; use another --candidates dir or --retrain",
                dir.display(),
                meta.model,
                &meta.weights_sha256[..12.min(meta.weights_sha256.len())],
                model.spec().name,
                &weights_sha256[..12]
            );
        }
        let mut bank = HeadBank::new(model, &meta.stages, &meta.variants)?;
        bank.load(&gati_core::weights::file_in(dir, &files.heads)?)?;
        let t = gati_core::weights::read(&gati_core::weights::file_in(dir, &files.outcomes)?)?;
        let n = bank.heads.len();
        Ok(Some(Self {
            calibration: Outcomes::from_tensors(&t, "calibration", n)?,
            evaluation: Outcomes::from_tensors(&t, "evaluation", n)?,
            meta,
            bank,
        }))
    }
}

fn read_meta(dir: &Path) -> Result<CandidateMeta> {
    let path = dir.join("meta.json");
    serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}
