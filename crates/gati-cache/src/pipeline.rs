//! Train-once candidate preparation: train every (layer, variant) head, record outcomes on both
//! test halves, and keep it all on disk so later plans reuse it.

use crate::candidates::{CandidateMeta, Candidates, HeadMeta};
use crate::heads::HeadBank;
use crate::heads::Variant;
use crate::outcomes::Outcomes;
use crate::student;
use crate::train::{self, TrainConfig};
use anyhow::Result;
use gati_core::{data::Dataset, BaseModel};
use std::path::Path;

pub struct Inputs<'a> {
    pub model: &'a BaseModel,
    pub weights_sha256: &'a str,
    pub train: &'a Dataset,
    pub calibration: &'a Dataset,
    pub evaluation: &'a Dataset,
    pub stages: &'a [usize],
    pub variants: &'a [Variant],
    pub config: &'a TrainConfig,
    /// How the calibration and evaluation halves were made (`split::SPLIT_RULE`, or a variant of
    /// it such as `split::camera_frames_rule()`): outcomes recorded under another rule are
    /// recorded again.
    pub outcomes_rule: &'a str,
    /// The smaller base `student` heads start from (`config.student_init` names it).
    pub student_init: Option<&'a BaseModel>,
    /// The adapter `student_init` was distilled through for this base, if it was.
    pub student_adapter: Option<&'a Path>,
}

/// Loads the candidates in `dir` if they were trained the same way, else trains and saves them.
pub fn prepare(inp: &Inputs, dir: &Path, retrain: bool) -> Result<(Candidates, bool)> {
    if !retrain {
        if let Some(c) = Candidates::load(dir, inp.model, inp.weights_sha256)? {
            let same = c.meta.stages == inp.stages
                && c.meta.variants == inp.variants
                && c.meta.train == *inp.config
                && c.calibration.len() == inp.calibration.len()
                && c.evaluation.len() == inp.evaluation.len();
            if same && c.meta.split == inp.outcomes_rule {
                eprintln!("reusing trained candidates in {}", dir.display());
                return Ok((c, false));
            }
            if same {
                // Same heads, other halves: record the outcomes again, no retraining.
                eprintln!(
                    "re-recording outcomes in {} for split rule {}",
                    dir.display(),
                    inp.outcomes_rule
                );
                let mut c = c;
                c.calibration = Outcomes::record(inp.model, &c.bank, inp.calibration, 256);
                c.evaluation = Outcomes::record(inp.model, &c.bank, inp.evaluation, 256);
                c.meta.split = inp.outcomes_rule.to_string();
                c.save(dir)?;
                return Ok((c, false));
            }
            eprintln!("candidates in {} were trained differently; retraining", dir.display());
        }
    }
    // Seed before the heads are built: their initial weights come from libtorch's global generator,
    // so without this, two trainings with the same seed differed.
    tch::manual_seed(inp.config.seed as i64);
    let mut bank = HeadBank::new(inp.model, inp.stages, inp.variants)?;
    if let Some(small) = inp.student_init {
        let first: Vec<usize> = (0..student::ADAPTER_FIT_IMAGES.min(inp.train.len())).collect();
        let n = student::initialise(
            &mut bank,
            inp.model,
            small,
            &inp.train.pixels(&first),
            inp.student_adapter,
        )?;
        match inp.student_adapter {
            Some(a) => eprintln!("{n} student heads start from {} and {}", small.spec().name, a.display()),
            None => eprintln!("{n} student heads start from {} (adapter fitted)", small.spec().name),
        }
    }
    eprintln!(
        "training {} cache heads ({} layers x {} variants) on {} images",
        bank.heads.len(),
        inp.stages.len(),
        inp.variants.len(),
        inp.train.len()
    );
    let report = train::train(&mut bank, inp.model, inp.train, inp.config);
    let calibration = Outcomes::record(inp.model, &bank, inp.calibration, 256);
    let evaluation = Outcomes::record(inp.model, &bank, inp.evaluation, 256);
    let meta = CandidateMeta {
        model: inp.model.spec().name.clone(),
        split: inp.outcomes_rule.to_string(),
        weights_sha256: inp.weights_sha256.to_string(),
        variants: inp.variants.to_vec(),
        stages: inp.stages.to_vec(),
        train: inp.config.clone(),
        train_seconds: report.seconds,
        train_fidelity: report.train_fidelity,
        student_lr_factor: report.student_lr_factor,
        heads: bank
            .heads
            .iter()
            .map(|h| HeadMeta {
                layer: h.layer.clone(),
                stage: h.stage,
                variant: h.variant,
                key: h.key.clone(),
                params: h.params,
            })
            .collect(),
        files: None,
    };
    let c = Candidates {
        meta,
        bank,
        calibration,
        evaluation,
    };
    c.save(dir)?;
    Ok((c, true))
}
