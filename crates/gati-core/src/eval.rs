//! Accuracy over a dataset and the batch-1 latency profile of a base model.

use crate::data::Dataset;
use crate::stats::LatencyStats;
use crate::BaseModel;
use serde::Serialize;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Logits `[N, K]` for every sample, computed in batches.
pub fn predict(model: &BaseModel, ds: &Dataset, batch: usize) -> Tensor {
    let _g = tch::no_grad_guard();
    let pb = crate::progress::bar(ds.len() as u64, "predict");
    let mut outs = Vec::new();
    for start in (0..ds.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(ds.len());
        outs.push(model.forward(&model.preprocess(&ds.pixel_range(start, end))));
        pb.inc((end - start) as u64);
    }
    pb.finish_and_clear();
    Tensor::cat(&outs, 0)
}

/// Top-1 accuracy in percent of `logits` against `labels`.
pub fn top1(logits: &Tensor, labels: &[i64]) -> f64 {
    let pred = argmax(logits);
    let correct = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    100.0 * correct as f64 / labels.len().max(1) as f64
}

/// Argmax over the last dimension as a Vec.
pub fn argmax(logits: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(logits.argmax(-1, false).to_kind(Kind::Int64)).expect("1-d argmax")
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub name: String,
    /// Mean batch-1 time of this stage alone.
    pub ms: f64,
    /// Share of the whole forward pass done by the end of this stage.
    pub cum_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyProfile {
    pub samples: usize,
    pub threads: i32,
    /// Whole forward pass, batch 1 (normalised input to logits).
    pub latency_ms: LatencyStats,
    pub stages: Vec<StageTiming>,
}

/// Batch-1 latency over the first `n` samples (after `warmup` untimed runs): per-stage means,
/// measured stage by stage, and the whole forward pass, measured separately without timers.
pub fn profile_latency(model: &BaseModel, ds: &Dataset, n: usize, warmup: usize) -> LatencyProfile {
    let _g = tch::no_grad_guard();
    let n = n.min(ds.len()).max(1);
    let inputs: Vec<Tensor> = (0..n).map(|i| model.preprocess(&ds.pixel_range(i, i + 1))).collect();
    for x in inputs.iter().cycle().take(warmup) {
        let _ = model.forward(x);
    }
    let pb = crate::progress::bar(2 * n as u64, "latency");
    let mut stage_sums = vec![0.0f64; model.num_stages()];
    for x in &inputs {
        let mut h = x.shallow_clone();
        for (k, sum) in stage_sums.iter_mut().enumerate() {
            let t = Instant::now();
            h = model.run_stage(k, &h);
            *sum += t.elapsed().as_secs_f64() * 1e3;
        }
        pb.inc(1);
    }
    let mut whole = Vec::with_capacity(n);
    for x in &inputs {
        let t = Instant::now();
        let _ = model.forward(x);
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let total: f64 = stage_sums.iter().sum();
    let mut cum = 0.0;
    let stages = model
        .stages()
        .iter()
        .zip(&stage_sums)
        .map(|(info, sum)| {
            cum += sum;
            StageTiming {
                name: info.name.clone(),
                ms: sum / n as f64,
                cum_fraction: cum / total,
            }
        })
        .collect();
    LatencyProfile {
        samples: n,
        threads: tch::get_num_threads(),
        latency_ms: LatencyStats::from_samples(&whole),
        stages,
    }
}
