//! The plan's memory cache held by the frontend (inline mode, `Cluster::memory_at_frontend`): the
//! base model's stages up to the memory's layer run in the frontend, so a near-duplicate of an
//! answered request is answered without the round trip to the base worker; the others go on to
//! the base worker as before (which then runs those few stages again: at an early layer, a small
//! fraction of a millisecond), and their answers are stored here.
//!
//! A sampled share of its hits (`complete_on_hit_fraction`) is audited (`MemoryAuditor`: the
//! whole base model on the request, off the response's path, in its own copy because the base
//! worker's inline caches would answer early).

use anyhow::Result;
use gati_cache::memory::MemoryCache;
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use prometheus::IntCounterVec;
use std::sync::{Arc, Mutex};
use tch::Tensor;

use crate::memory_audit::MemoryAuditor;

pub struct FrontMemory {
    /// The base model; only stages `0..=cache.spec.stage` run here (a few tens of microseconds
    /// at an early layer, so one model behind a lock serves every request thread).
    model: Mutex<BaseModel>,
    pub cache: Arc<MemoryCache>,
    /// None when no hit is audited (`complete_on_hit_fraction` 0: no second copy of the model,
    /// no thread).
    auditor: Option<MemoryAuditor>,
}

impl FrontMemory {
    /// `agreement` counts the audits (`gati_hit_agreement_total`); `audited`: some hits will be.
    pub fn new(plan: &Plan, agreement: IntCounterVec, audited: bool) -> Result<Option<Self>> {
        let Some(m) = &plan.memory else {
            return Ok(None);
        };
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        let cache = Arc::new(gati_cache::runtime::memory_cache(&model, &m.spec)?);
        let auditor = if audited {
            Some(MemoryAuditor::start(plan, cache.clone(), Some(agreement))?)
        } else {
            None
        };
        Ok(Some(Self {
            model: Mutex::new(model),
            cache,
            auditor,
        }))
    }

    /// Has the base model check a hit on `input` (`[1, C, H, W]`).
    pub fn audit(&self, input: &Tensor, class: usize, confidence: f32) {
        if let Some(a) = &self.auditor {
            a.audit(input, 0, class, confidence);
        }
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
