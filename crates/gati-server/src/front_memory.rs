//! The plan's memory cache held by the frontend (inline mode, `Cluster::memory_at_frontend`): the
//! base model's stages up to the memory's layer run in the frontend, so a near-duplicate of an
//! answered request is answered without the round trip to the base worker; the others go on to
//! the base worker as before (which then runs those few stages again: at an early layer, a small
//! fraction of a millisecond), and their answers are stored here.
//!
//! A sampled share of its hits (`complete_on_hit_fraction`) is audited: a thread here runs the
//! whole base model on the request off the response's path (its own copy: the base worker's
//! inline caches would answer early), and the memory's guard raises its confidence floor when
//! the hits disagree with the base model beyond the plan's budget.

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use gati_cache::memory::MemoryCache;
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use prometheus::IntCounterVec;
use std::sync::{Arc, Mutex};
use tch::Tensor;

/// Sampled hits waiting for their audit; more are dropped (audits are a sample anyway).
const AUDIT_QUEUE: usize = 64;

pub struct FrontMemory {
    /// The base model; only stages `0..=cache.spec.stage` run here (a few tens of microseconds
    /// at an early layer, so one model behind a lock serves every request thread).
    model: Mutex<BaseModel>,
    pub cache: Arc<MemoryCache>,
    /// To the audit thread (it ends when this is dropped); none when no hit is audited
    /// (`complete_on_hit_fraction` 0: no second copy of the model, no thread).
    audits: Option<Sender<Audit>>,
}

/// A memory hit to check: its preprocessed input and the answer the memory gave.
struct Audit {
    input: Tensor,
    class: usize,
    confidence: f32,
}

impl FrontMemory {
    /// `agreement` counts the audits (`gati_hit_agreement_total`); `audited`: some hits will be.
    pub fn new(plan: &Plan, agreement: IntCounterVec, audited: bool) -> Result<Option<Self>> {
        let Some(m) = &plan.memory else {
            return Ok(None);
        };
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        let cache = Arc::new(gati_cache::runtime::memory_cache(&model, &m.spec)?);
        let audits = if audited {
            let (audits, queue) = bounded(AUDIT_QUEUE);
            let (c, budget) = (cache.clone(), plan.budget);
            let auditor = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
            std::thread::Builder::new()
                .name("memory-audit".into())
                .spawn(move || audit_hits(queue, &auditor, &c, &agreement, budget))
                .context("starting the memory audit thread")?;
            Some(audits)
        } else {
            None
        };
        Ok(Some(Self {
            model: Mutex::new(model),
            cache,
            audits,
        }))
    }

    /// Has the base model check a hit on `input` (`[1, C, H, W]`); dropped when the audit queue
    /// is full.
    pub fn audit(&self, input: &Tensor, class: usize, confidence: f32) {
        let Some(audits) = &self.audits else {
            return;
        };
        let input = input.shallow_clone();
        let _ = audits.try_send(Audit {
            input,
            class,
            confidence,
        });
    }

    /// The memory key of one preprocessed input `[1, C, H, W]`.
    pub fn key(&self, x: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        let model = crate::resources::lock(&self.model);
        let mut h = x.shallow_clone();
        for k in 0..=self.cache.spec.stage {
            h = model.run_stage(k, &h);
        }
        drop(model);
        self.cache.keys(&h)
    }

    /// The stored answer for `key` (softmax row, class, confidence), if near enough.
    pub fn recall(&self, key: &Tensor) -> Option<(Vec<f32>, usize, f32)> {
        self.cache.answer_rows(key).pop().flatten()
    }

    /// Stores a request's final answer (its full softmax row) under its key.
    pub fn remember(&self, key: &Tensor, probs: Vec<f32>) {
        self.cache.remember(&key.get(0), probs);
    }
}

/// The audit thread: the whole base model on each audited hit's input, the agreement counted,
/// and the guard told.
fn audit_hits(queue: Receiver<Audit>, model: &BaseModel, cache: &MemoryCache, agreement: &IntCounterVec, budget: f64) {
    let _g = tch::no_grad_guard();
    let label = gati_cache::evaluate::memory_label(&cache.spec.layer);
    for a in queue {
        let base_class = model.forward(&a.input).argmax(-1, false).int64_value(&[0]) as usize;
        let wrong = base_class != a.class;
        crate::metrics::count_agreement(agreement, &label, !wrong);
        tell_guard(cache, a.confidence, wrong, budget);
    }
}

/// The memory's guard told of one audited hit (wherever the memory serves: here, or at a cache
/// worker): the stored answer's confidence and whether the base model answered otherwise.
pub fn tell_guard(cache: &MemoryCache, confidence: f32, wrong: bool, budget: f64) {
    if let Some(floor) = cache.audit(confidence, wrong, budget) {
        tracing::warn!(
            layer = %cache.spec.layer,
            min_confidence = floor,
            "memory hits disagree with the base model beyond the budget: confidence floor raised"
        );
    }
}
