//! Candidate caches: every (layer, variant) head in one VarStore, their measured cost, and their
//! recorded outcomes on the calibration and evaluation halves. Kept on disk so that planning
//! again with another budget or mode does not retrain.

use crate::heads::{HeadBank, Variant};
use crate::outcomes::Outcomes;
use anyhow::{bail, Context, Result};
use gati_core::BaseModel;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// The student's learning-rate factor at the end of training (after `train`'s guard), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_lr_factor: Option<f64>,
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
        let heads = gati_core::files::write_content_named(dir, "heads", &self.bank.tensors())?;
        let mut t = self.calibration.to_tensors("calibration");
        t.extend(self.evaluation.to_tensors("evaluation"));
        let outcomes = gati_core::files::write_content_named(dir, "outcomes", &t)?;
        let mut meta = self.meta.clone();
        meta.files = Some(CandidateFiles { heads, outcomes });
        gati_core::files::write_json_atomic(&meta, &dir.join("meta.json"))?;
        let (files, old) = (meta.files.as_ref().expect("set above"), previous.as_ref());
        gati_core::files::remove_stale(dir, "heads", &files.heads, old.map(|f| f.heads.as_str()));
        gati_core::files::remove_stale(dir, "outcomes", &files.outcomes, old.map(|f| f.outcomes.as_str()));
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
        bank.load(&gati_core::files::file_in(dir, &files.heads)?)?;
        let t = gati_core::weights::read(&gati_core::files::file_in(dir, &files.outcomes)?)?;
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
