//! The plan's memory cache held by the frontend (inline mode, `Cluster::memory_at_frontend`): the
//! base model's stages up to the memory's layer run in the frontend, so a near-duplicate of an
//! answered request is answered without the round trip to the base worker; the others go on to
//! the base worker as before (which then runs those few stages again: at an early layer, a small
//! fraction of a millisecond), and their answers are stored here.

use anyhow::Result;
use gati_cache::memory::MemoryCache;
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use std::sync::{Arc, Mutex};
use tch::Tensor;

pub struct FrontMemory {
    /// The base model; only stages `0..=cache.spec.stage` run here (a few tens of microseconds
    /// at an early layer, so one model behind a lock serves every request thread).
    model: Mutex<BaseModel>,
    pub cache: Arc<MemoryCache>,
}

impl FrontMemory {
    pub fn new(plan: &Plan) -> Result<Option<Self>> {
        let Some(m) = &plan.memory else {
            return Ok(None);
        };
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        let cache = Arc::new(gati_cache::runtime::memory_cache(&model, &m.spec)?);
        Ok(Some(Self {
            model: Mutex::new(model),
            cache,
        }))
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
