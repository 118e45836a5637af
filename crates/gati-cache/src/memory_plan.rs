//! Planning a memory cache on a calibration *stream*: the order of requests matters (a hit needs an
//! earlier near-duplicate that ran to the end), so each setting is scored by replaying the stream
//! through the plan's learned caches and a simulated store, request by request.
//!
//! Every request of the stream was run once through the base model (its answer and confidence on
//! that very frame), the learned plan (its answer and latency), and turned into a key at each
//! candidate layer. A setting is (layer, similarity threshold, confidence threshold, learned caches
//! kept or not); its figures are exact for the stream, and the chosen one is the fastest whose
//! disagreements w satisfy w + z·√w ≤ budget·n, as the learned planner's are.

use crate::memory::{decide, MemorySpec, Neighbour, NEIGHBOURS};
use serde::Serialize;
use tch::Tensor;

/// One calibration request, as the plan without a memory cache served it.
#[derive(Debug, Clone)]
pub struct StreamSample {
    /// The base model's answer on this request and its softmax probability.
    pub base_class: usize,
    pub base_confidence: f32,
    /// Ground truth, where known.
    pub label: Option<i64>,
    /// The learned plan's answer, the stage its cache answered at (None: the base model), and its
    /// modelled latency.
    pub learned_class: usize,
    pub learned_stage: Option<usize>,
    /// The answering cache's softmax probability of `learned_class` (on a learned hit).
    pub learned_confidence: f32,
    pub learned_ms: f64,
    /// The stream item (image) this request shows: answers to one item's repeats are wrong
    /// together, so the budget's margin counts errors by item.
    pub item: usize,
}

impl StreamSample {
    /// The answer a store keeps for this request when it ran through the learned plan: a learned
    /// cache's hit, else the base model's.
    fn remembered(&self) -> (usize, f32) {
        match self.learned_stage {
            Some(_) => (self.learned_class, self.learned_confidence),
            None => (self.base_class, self.base_confidence),
        }
    }
}

/// The keys of every request at one candidate layer.
pub struct LayerKeys {
    pub layer: String,
    pub stage: usize,
    pub grid: i64,
    /// `[n, d]`, unit rows.
    pub keys: Tensor,
    /// Modelled latency of a memory hit there: base stages up to it, the learned caches consulted
    /// before it, and the lookup.
    pub hit_ms: f64,
    /// The lookup's cost, paid by every request that reaches the layer.
    pub lookup_ms: f64,
}

/// Similarity thresholds tried.
pub const SIMILARITIES: [f32; 10] = [0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998];
/// Stored-answer confidence thresholds tried.
pub const CONFIDENCES: [f32; 7] = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999];

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub layer: String,
    pub stage: usize,
    pub grid: i64,
    pub min_similarity: f32,
    pub min_confidence: f32,
    pub min_votes: usize,
    /// False: the learned caches are switched off (the memory cache alone, with the base model).
    pub learned: bool,
    /// The learned caches' hits are stored too.
    pub remember_cache_hits: bool,
    /// A hit moves its entry's key to the request's.
    pub follow_hits: bool,
    pub memory_hit_rate: f64,
    pub hit_rate: f64,
    pub fidelity_loss: f64,
    /// Standard error of `fidelity_loss` with disagreements counted by stream item (√Σ w_i² / n
    /// for w_i disagreements on item i): √w / n when no item is answered wrongly twice, more
    /// when errors come in bursts.
    pub fidelity_loss_se: f64,
    pub accuracy_loss: Option<f64>,
    pub mean_ms: f64,
    pub speedup: f64,
}

/// What the simulation of one setting gives.
struct Replay {
    memory_hits: usize,
    learned_hits: usize,
    wrong: usize,
    /// Disagreements per stream item.
    wrong_by_item: std::collections::HashMap<usize, usize>,
    correct: usize,
    base_correct: usize,
    total_ms: f64,
}

/// Replays the stream with a memory cache at `lk` (or none: `lk` None), holding at most `capacity`
/// entries with least-recently-used eviction, as `MemoryStore` does.
#[allow(clippy::too_many_arguments)]
fn replay(
    s: &[StreamSample],
    lk: Option<(&LayerKeys, &[f32])>,
    (min_similarity, min_confidence, min_votes): (f32, f32, usize),
    learned: bool,
    remember_cache_hits: bool,
    follow_hits: bool,
    capacity: usize,
    base_ms: f64,
) -> Replay {
    let n = s.len();
    let stored = |x: &StreamSample| {
        if learned {
            x.remembered()
        } else {
            (x.base_class, x.base_confidence)
        }
    };
    // Stored entries: (request whose answer it holds, last used, request whose key it holds).
    let mut store: Vec<(usize, usize, usize)> = Vec::new();
    let mut r = Replay {
        memory_hits: 0,
        learned_hits: 0,
        wrong: 0,
        wrong_by_item: Default::default(),
        correct: 0,
        base_correct: 0,
        total_ms: 0.0,
    };
    for (i, x) in s.iter().enumerate() {
        let (lclass, lstage, lms) = if learned {
            (x.learned_class, x.learned_stage, x.learned_ms)
        } else {
            (x.base_class, None, base_ms)
        };
        r.base_correct += x.label.is_some_and(|l| l == x.base_class as i64) as usize;
        let mut answer = None;
        let mut ms = lms;
        if let Some((k, sims)) = lk {
            // A learned cache before the memory layer answers first.
            let reaches = lstage.is_none_or(|st| st >= k.stage);
            if reaches {
                ms += k.lookup_ms;
                let row = &sims[i * n..(i + 1) * n];
                // The NEIGHBOURS most similar stored requests, best first: (similarity, position).
                let mut top: Vec<(f32, usize)> = Vec::with_capacity(NEIGHBOURS + 1);
                for (pos, &(_, _, j)) in store.iter().enumerate() {
                    let v = row[j];
                    if top.len() < NEIGHBOURS || v > top[top.len() - 1].0 {
                        let at = top.iter().position(|t| v > t.0).unwrap_or(top.len());
                        top.insert(at, (v, pos));
                        top.truncate(NEIGHBOURS);
                    }
                }
                let near: Vec<Neighbour> = top
                    .iter()
                    .map(|&(v, pos)| {
                        let (class, confidence) = stored(&s[store[pos].0]);
                        Neighbour {
                            similarity: v,
                            class,
                            confidence,
                        }
                    })
                    .collect();
                if let Some(class) = decide(&near, min_similarity, min_confidence, min_votes) {
                    answer = Some(class);
                    ms = k.hit_ms;
                    store[top[0].1].1 = i;
                    if follow_hits {
                        store[top[0].1].2 = i;
                    }
                }
            }
            let kept = answer.is_none() && (lstage.is_none() || remember_cache_hits);
            if kept && capacity > 0 {
                if store.len() >= capacity {
                    let oldest = (0..store.len()).min_by_key(|&p| store[p].1).expect("full store");
                    store.swap_remove(oldest);
                }
                store.push((i, i, i));
            }
        }
        let class = match answer {
            Some(c) => {
                r.memory_hits += 1;
                c
            }
            None => {
                r.learned_hits += lstage.is_some() as usize;
                lclass
            }
        };
        if class != x.base_class {
            r.wrong += 1;
            *r.wrong_by_item.entry(x.item).or_default() += 1;
        }
        r.correct += x.label.is_some_and(|l| l == class as i64) as usize;
        r.total_ms += ms;
    }
    r
}

/// `[n, n]` cosine similarities of a layer's keys, row-major.
pub fn similarities(keys: &Tensor) -> Vec<f32> {
    let _g = tch::no_grad_guard();
    Vec::<f32>::try_from(keys.mm(&keys.tr()).flatten(0, -1)).expect("f32 similarities")
}

/// Scores every setting (and the learned plan alone) on the stream; returns them all, the
/// learned-only one first. `capacity(layer)` is the store's size at that layer.
pub fn score_all(
    samples: &[StreamSample],
    layers: &[LayerKeys],
    capacity: impl Fn(&LayerKeys) -> usize,
    base_ms: f64,
) -> Vec<Scored> {
    let n = samples.len().max(1) as f64;
    let labelled = samples.iter().all(|s| s.label.is_some());
    let score = |r: Replay,
                 lk: Option<&LayerKeys>,
                 (sim, conf, votes): (f32, f32, usize),
                 learned: bool,
                 (remember, follow): (bool, bool)| {
        let mean_ms = r.total_ms / n;
        Scored {
            layer: lk.map_or_else(String::new, |k| k.layer.clone()),
            stage: lk.map_or(0, |k| k.stage),
            grid: lk.map_or(0, |k| k.grid),
            min_similarity: sim,
            min_confidence: conf,
            min_votes: votes,
            learned,
            remember_cache_hits: remember,
            follow_hits: follow,
            memory_hit_rate: r.memory_hits as f64 / n,
            hit_rate: (r.memory_hits + r.learned_hits) as f64 / n,
            fidelity_loss: r.wrong as f64 / n,
            fidelity_loss_se: r.wrong_by_item.values().map(|&w| (w * w) as f64).sum::<f64>().sqrt() / n,
            accuracy_loss: labelled.then(|| (r.base_correct as f64 - r.correct as f64) / n),
            mean_ms,
            speedup: base_ms / mean_ms,
        }
    };
    let mut out = vec![score(
        replay(samples, None, (0.0, 0.0, 1), true, false, false, 0, base_ms),
        None,
        (0.0, 0.0, 1),
        true,
        (false, false),
    )];
    for lk in layers {
        let sims = similarities(&lk.keys);
        let cap = capacity(lk);
        for (learned, remember) in [(true, false), (true, true), (false, false)] {
            for follow in [false, true] {
                for &sim in &SIMILARITIES {
                    for &conf in &CONFIDENCES {
                        for votes in [1, 2] {
                            let setting = (sim, conf, votes);
                            let r = replay(
                                samples,
                                Some((lk, &sims)),
                                setting,
                                learned,
                                remember,
                                follow,
                                cap,
                                base_ms,
                            );
                            out.push(score(r, Some(lk), setting, learned, (remember, follow)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The fastest setting within budget: fidelity loss + z standard errors (disagreements counted
/// by stream item) ≤ budget (`scored[0]`, the learned plan alone, when nothing with memory is).
/// Where no item is answered wrongly twice this is w + z·√w ≤ budget·n for w disagreements.
pub fn best_within(scored: &[Scored], budget: f64, margin_sigmas: f64) -> &Scored {
    let fits = |s: &&Scored| s.fidelity_loss + margin_sigmas * s.fidelity_loss_se <= budget + 1e-9;
    scored
        .iter()
        .filter(fits)
        .min_by(|a, b| a.mean_ms.total_cmp(&b.mean_ms))
        .unwrap_or(&scored[0])
}

/// The spec of a scored setting, whose lookup costs `lookup_ms` and whose hit saves `saved_ms`
/// (the base model's stages after it): lookups pay while more than their ratio hit.
pub fn spec_of(
    s: &Scored,
    max_bytes: u64,
    index: crate::memory::MemoryIndex,
    lookup_ms: f64,
    saved_ms: f64,
) -> MemorySpec {
    MemorySpec {
        min_hit_rate: if saved_ms > 0.0 {
            (lookup_ms / saved_ms).min(1.0)
        } else {
            0.0
        },
        layer: s.layer.clone(),
        stage: s.stage,
        grid: s.grid,
        min_similarity: s.min_similarity,
        min_confidence: s.min_confidence,
        min_votes: s.min_votes,
        max_bytes,
        remember_cache_hits: s.remember_cache_hits,
        follow_hits: s.follow_hits,
        index,
    }
}

/// Runs every request of `stream` (pixels in order, as `workload::stream_dataset` makes them;
/// `items[i]` is the image request i shows)
/// through `ee`'s learned caches (made from `plan`; its memory cache, if any, is not consulted)
/// and the base model, in batches, keeping each request's key at every candidate stage in
/// `stages`. Latencies follow the plan's stage profile and `Plan::cache_costs_ms`; `lookup_ms` is
/// each layer's measured lookup cost.
pub fn prepare(
    ee: &crate::runtime::EarlyExit,
    plan: &crate::plan::Plan,
    stream: &gati_core::data::Dataset,
    items: &[usize],
    stages: &[usize],
    lookup_ms: &[f64],
) -> (Vec<StreamSample>, Vec<LayerKeys>) {
    let _g = tch::no_grad_guard();
    let m = &ee.model;
    let cum = crate::planner::cumulative(&plan.stage_ms);
    let base_ms = *cum.last().unwrap_or(&0.0);
    let costs = plan.cache_costs_ms();
    // What the caches at stages before `k` add to the base model's path.
    let path_before = |k: usize| -> f64 {
        ee.caches
            .iter()
            .zip(&costs)
            .filter(|(c, _)| c.stage < k)
            .map(|(_, &(path, _))| path)
            .sum()
    };
    // A hit of the cache at stage k: the caches before it on the path, then its own answer.
    let hit_at = |k: usize| -> f64 {
        let own = ee
            .caches
            .iter()
            .zip(&costs)
            .find(|(c, _)| c.stage == k)
            .map_or(0.0, |(_, &(_, hit))| hit);
        cum[k] + path_before(k) + own
    };
    let mut samples = Vec::with_capacity(stream.len());
    let mut keys: Vec<Vec<Tensor>> = stages.iter().map(|_| Vec::new()).collect();
    let grids: Vec<i64> = stages
        .iter()
        .map(|&k| {
            let s = &m.stages()[k].output_shape;
            crate::memory::key_grid(s[1], s[2])
        })
        .collect();
    let pb = gati_core::progress::bar(stream.len() as u64, "stream");
    for start in (0..stream.len()).step_by(64) {
        let end = (start + 64).min(stream.len());
        let x = m.preprocess(&stream.pixel_range(start, end));
        let walked = ee.walk(&x, 0, &mut NoMemory);
        let (logits, acts) = m.forward_collect(&x, stages);
        let probs = crate::runtime::probs_rows(&logits);
        for (i, (w, p)) in walked.iter().zip(&probs).enumerate() {
            let (base_class, base_confidence) = crate::outcomes::top1(p);
            let (learned_class, learned_stage, learned_confidence, learned_ms) = match &w.hit {
                Some(h) => (h.class, Some(h.stage), h.confidence, hit_at(h.stage)),
                None => (base_class, None, 0.0, base_ms + path_before(usize::MAX)),
            };
            samples.push(StreamSample {
                base_class,
                base_confidence,
                label: Some(stream.labels[start + i]),
                learned_class,
                learned_stage,
                learned_confidence,
                learned_ms,
                item: items[start + i],
            });
        }
        for ((kept, a), &g) in keys.iter_mut().zip(&acts).zip(&grids) {
            kept.push(crate::memory::keys(a, g));
        }
        pb.inc((end - start) as u64);
    }
    pb.finish_and_clear();
    let layers = stages
        .iter()
        .zip(keys)
        .zip(grids)
        .zip(lookup_ms)
        .map(|(((&k, kept), grid), &lookup)| LayerKeys {
            layer: m.stages()[k].name.clone(),
            stage: k,
            grid,
            keys: Tensor::cat(&kept, 0),
            hit_ms: cum[k] + path_before(k) + lookup,
            lookup_ms: lookup,
        })
        .collect();
    (samples, layers)
}

/// The walk with the learned caches only.
struct NoMemory;

impl crate::runtime::Hooks for NoMemory {}

/// Measured cost (ms, batch 1, at the current thread count; 500 lookups) of a lookup in a full
/// store of `max_bytes` at `stage` searched by `index`: the key of one activation and the search.
/// The store is filled with the keys of random activations (in chunks, to bound the memory used).
pub fn lookup_cost_ms(
    model: &gati_core::BaseModel,
    stage: usize,
    max_bytes: u64,
    index: crate::memory::MemoryIndex,
) -> anyhow::Result<gati_core::stats::LatencyStats> {
    let info = &model.stages()[stage];
    let s = &info.output_shape;
    let spec = MemorySpec {
        layer: info.name.clone(),
        stage,
        grid: crate::memory::key_grid(s[1], s[2]),
        min_similarity: 2.0,
        min_confidence: 0.0,
        min_votes: 1,
        max_bytes,
        remember_cache_hits: false,
        follow_hits: false,
        index,
        min_hit_rate: 0.0,
    };
    let cache = crate::runtime::memory_cache(model, &spec)?;
    let classes = model.spec().num_classes;
    let act = Tensor::randn([1, s[1], s[2], s[3]], (tch::Kind::Float, tch::Device::Cpu));
    let probs = vec![1.0 / classes as f32; classes as usize];
    for start in (0..cache.capacity()).step_by(1024) {
        let n = 1024.min(cache.capacity() - start) as i64;
        let filler = crate::memory::keys(
            &Tensor::randn([n, s[1], s[2], s[3]], (tch::Kind::Float, tch::Device::Cpu)),
            spec.grid,
        );
        for i in 0..n {
            cache.remember(&filler.get(i), probs.clone());
        }
    }
    let _g = tch::no_grad_guard();
    let mut times = Vec::new();
    for _ in 0..500 {
        let t = std::time::Instant::now();
        let k = cache.keys(&act);
        let _ = cache.answer_rows(&k);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(gati_core::stats::LatencyStats::from_samples(&times))
}
