//! Measuring a plan in-process on the evaluation half: real early exit against the base model
//! alone, interleaved sample by sample on the same thread count.

use crate::candidates::Candidates;
use crate::runtime::{EarlyExit, Exit};
use gati_core::data::Dataset;
use gati_core::names::Named;
use gati_core::stats::LatencyStats;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct LayerHits {
    pub layer: String,
    pub variant: String,
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n: usize,
    pub base_top1: f64,
    pub gati_top1: f64,
    pub fidelity_loss: f64,
    /// Top-1 lost against the labels, as a fraction (base_top1 − gati_top1, over 100).
    pub accuracy_loss: f64,
    pub hit_rate: f64,
    pub hit_rate_per_layer: Vec<LayerHits>,
    pub base_latency_ms: LatencyStats,
    pub gati_latency_ms: LatencyStats,
    /// Mean base latency / mean gati latency, measured.
    pub speedup: f64,
    /// The oracle's speed-up (earliest agreeing candidate cache, from recorded outcomes and the
    /// planned stage costs), when the candidates are available.
    pub oracle_speedup: Option<f64>,
    pub threads: i32,
    /// What the memory cache did and cost over the measured run (None: the plan has none).
    pub memory: Option<MemoryUse>,
}

/// The memory cache's work over a measured run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryUse {
    /// Requests whose key was searched, and those the gate let skip the search.
    pub lookups: u64,
    pub skipped: u64,
    pub hits: u64,
    /// Time making keys, searching and storing answers, per request of the run.
    pub ms_per_request: f64,
    /// That time over the base model's mean latency.
    pub share_of_base_latency: f64,
}

fn memory_counters(s: &crate::memory::MemoryStats) -> [u64; 4] {
    use std::sync::atomic::Ordering::Relaxed;
    [
        s.lookups.load(Relaxed),
        s.skipped.load(Relaxed),
        s.hits.load(Relaxed),
        s.key_ns.load(Relaxed) + s.lookup_ns.load(Relaxed) + s.insert_ns.load(Relaxed),
    ]
}

/// How reports name the memory cache's hits (`memory:layer1.0`), apart from a cache model's there.
pub fn memory_label(layer: &str) -> String {
    format!("memory:{layer}")
}

/// Runs every sample of `ds` through the base model alone and through the plan (batch 1).
pub fn evaluate(ee: &EarlyExit, ds: &Dataset, warmup: usize) -> Report {
    let _g = tch::no_grad_guard();
    let m = &ee.model;
    let inputs: Vec<_> = (0..ds.len()).map(|i| m.preprocess(&ds.pixel_range(i, i + 1))).collect();
    for x in inputs.iter().take(warmup) {
        let _ = m.forward(x);
        let _ = ee.infer(x);
    }
    // The measured run starts with an empty memory: warm-up requests are not repeats.
    if let Some(mem) = &ee.memory {
        mem.clear();
    }
    let memory_before = ee.memory.as_ref().map(|m| memory_counters(&m.stats));
    let (mut base_ms, mut gati_ms) = (Vec::new(), Vec::new());
    let (mut base_ok, mut gati_ok, mut differ) = (0usize, 0usize, 0usize);
    let mut hits = vec![0usize; ee.caches.len()];
    let mut memory_hits = 0usize;
    let pb = gati_core::progress::bar(ds.len() as u64, "evaluate");
    for (i, x) in inputs.iter().enumerate() {
        let run_base = || {
            let t = Instant::now();
            let z = m.forward(x);
            (t.elapsed().as_secs_f64() * 1e3, gati_core::eval::argmax(&z)[0])
        };
        let run_gati = || {
            let t = Instant::now();
            let a = ee.infer(x);
            (t.elapsed().as_secs_f64() * 1e3, a)
        };
        // Alternate the order so neither path always runs on a warm cache.
        let ((bt, bp), (gt, ga)) = if i % 2 == 0 {
            let b = run_base();
            (b, run_gati())
        } else {
            let g = run_gati();
            (run_base(), g)
        };
        base_ms.push(bt);
        gati_ms.push(gt);
        base_ok += (bp == ds.labels[i]) as usize;
        gati_ok += (ga.class as i64 == ds.labels[i]) as usize;
        differ += (ga.class as i64 != bp) as usize;
        match ga.exit {
            Exit::Cache(c) => hits[c] += 1,
            Exit::Memory => memory_hits += 1,
            Exit::Base => {}
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let n = ds.len().max(1) as f64;
    let base = LatencyStats::from_samples(&base_ms);
    let gati = LatencyStats::from_samples(&gati_ms);
    let memory = ee.memory.as_ref().zip(memory_before).map(|(m, before)| {
        let now = memory_counters(&m.stats);
        let [lookups, skipped, hits, ns] = std::array::from_fn(|i| now[i] - before[i]);
        let ms_per_request = ns as f64 * 1e-6 / n;
        MemoryUse {
            lookups,
            skipped,
            hits,
            ms_per_request,
            share_of_base_latency: ms_per_request / base.mean,
        }
    });
    Report {
        n: ds.len(),
        base_top1: 100.0 * base_ok as f64 / n,
        gati_top1: 100.0 * gati_ok as f64 / n,
        fidelity_loss: differ as f64 / n,
        accuracy_loss: (base_ok as f64 - gati_ok as f64) / n,
        hit_rate: (hits.iter().sum::<usize>() + memory_hits) as f64 / n,
        hit_rate_per_layer: ee
            .memory
            .iter()
            .map(|m| LayerHits {
                layer: memory_label(&m.spec.layer),
                variant: "memory".into(),
                hit_rate: memory_hits as f64 / n,
            })
            .chain(ee.caches.iter().zip(&hits).map(|(c, &h)| LayerHits {
                layer: c.layer.clone(),
                variant: c.head.variant.name(),
                hit_rate: h as f64 / n,
            }))
            .collect(),
        speedup: base.mean / gati.mean,
        base_latency_ms: base,
        gati_latency_ms: gati,
        oracle_speedup: None,
        threads: tch::get_num_threads(),
        memory,
    }
}

/// The oracle's speed-up over the evaluation half (or over `samples` of it, repeats counted):
/// each sample leaves at the earliest stage where some candidate head predicts the base model's
/// answer, paying the base stages up to there and that head's cost.
pub fn oracle_speedup(c: &Candidates, costs: &[f64], stage_ms: &[f64], samples: Option<&[usize]>) -> f64 {
    let o = &c.evaluation;
    let cum = crate::planner::cumulative(stage_ms);
    let total = *cum.last().unwrap_or(&0.0);
    let oracle_ms = |i: usize| {
        c.bank
            .heads
            .iter()
            .enumerate()
            .filter(|(h, _)| o.top(*h, i).0 as i64 == o.base_pred[i])
            .map(|(h, e)| cum[e.stage] + costs[h])
            .fold(total, f64::min)
    };
    let all: Vec<usize>;
    let samples = match samples {
        Some(s) => s,
        None => {
            all = (0..o.len()).collect();
            &all
        }
    };
    let sum: f64 = samples.iter().map(|&i| oracle_ms(i)).sum();
    total / (sum / samples.len().max(1) as f64)
}
