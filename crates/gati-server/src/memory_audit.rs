//! Audits of a memory cache's hits, wherever the memory serves: a sampled hit's remaining base
//! stages run off the response's path (a thread with its own copy of the base model), the
//! agreement is counted, and the memory's guard raises its confidence floor when the hits
//! disagree with the base model beyond the plan's budget.

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use gati_cache::memory::MemoryCache;
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use prometheus::IntCounterVec;
use std::sync::Arc;
use tch::Tensor;

/// Sampled hits waiting for their audit; more are dropped (audits are a sample anyway).
const AUDIT_QUEUE: usize = 64;

/// The audit thread's inbox; the thread ends when this is dropped.
pub struct MemoryAuditor {
    queue: Sender<Audit>,
}

/// A memory hit to check: the base model's state when it hit and the answer the memory gave.
struct Audit {
    /// The output of stage `from - 1` (the preprocessed input when `from` is 0), `[1, ...]`.
    activation: Tensor,
    from: usize,
    class: usize,
    confidence: f32,
}

impl MemoryAuditor {
    /// Starts the audit thread for `cache`, serving `plan`; `agreement` counts the audits
    /// (`gati_hit_agreement_total`) where the process exports it.
    pub fn start(plan: &Plan, cache: Arc<MemoryCache>, agreement: Option<IntCounterVec>) -> Result<Self> {
        let (queue, inbox) = bounded(AUDIT_QUEUE);
        let budget = plan.budget;
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        std::thread::Builder::new()
            .name("memory-audit".into())
            .spawn(move || audit_hits(inbox, &model, &cache, agreement.as_ref(), budget))
            .context("starting the memory audit thread")?;
        Ok(Self { queue })
    }

    /// Has the base model check a hit that left after stage `from - 1` with `activation`;
    /// dropped when the queue is full.
    pub fn audit(&self, activation: &Tensor, from: usize, class: usize, confidence: f32) {
        let _ = self.queue.try_send(Audit {
            activation: activation.shallow_clone(),
            from,
            class,
            confidence,
        });
    }
}

fn audit_hits(
    inbox: Receiver<Audit>,
    model: &BaseModel,
    cache: &MemoryCache,
    agreement: Option<&IntCounterVec>,
    budget: f64,
) {
    let _g = tch::no_grad_guard();
    let label = gati_cache::evaluate::memory_label(&cache.spec.layer);
    for a in inbox {
        // The hit's activation lives wherever the serving model runs; the auditor's on the CPU.
        let x = a.activation.to_device(tch::Device::Cpu);
        let logits = model.forward_range(a.from, model.num_stages(), &x);
        let wrong = logits.argmax(-1, false).int64_value(&[0]) as usize != a.class;
        if let Some(agreement) = agreement {
            crate::metrics::count_agreement(agreement, &label, !wrong);
        }
        tell_guard(cache, a.confidence, wrong, budget);
    }
}

/// The memory's guard told of one audited hit: the stored answer's confidence and whether the
/// base model answered otherwise.
pub fn tell_guard(cache: &MemoryCache, confidence: f32, wrong: bool, budget: f64) {
    if let Some(floor) = cache.audit(confidence, wrong, budget) {
        tracing::warn!(
            layer = %cache.spec.layer,
            min_confidence = floor,
            "memory hits disagree with the base model beyond the budget: confidence floor raised"
        );
    }
}
