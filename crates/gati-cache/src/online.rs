//! Online learning, in-process core: the plan's caches keep learning from the traffic they serve.
//!
//! Every request that runs the base model to the end leaves evidence: the activation at each
//! planned cache layer and the base model's logits. Misses always run to the end (biased: every
//! cache declined them); a random `complete_fraction` of *all* requests also runs to the end even
//! after a hit (uniform: an unbiased sample of the traffic). Every `retrain_every` pieces of
//! evidence, each cache is fine-tuned by distillation on the recent evidence, its per-class
//! thresholds are re-fitted on half of the recent uniform samples, and it is compared with the
//! serving version on the other half: it replaces it only with more hits and no more than
//! `error_target` disagreement among them. Each promotion bumps the version. A learned version that
//! later fails validation (the traffic moved on) is replaced by the plan's own cache.
//!
//! This is the in-process core; serving it through the Thrift workers (hot swap by RPC,
//! persistence of versions, operator controls) is still to be built.

use crate::decision::{threshold_for, Decision};
use crate::heads::CacheHead;
use crate::runtime::{probs_row, Answer, EarlyExit, Exit};
use crate::train::distillation_loss;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::VecDeque;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct OnlineConfig {
    /// Evidence kept per cache (most recent).
    pub buffer: usize,
    /// New pieces of evidence between rounds.
    pub retrain_every: usize,
    /// SGD steps per cache per round.
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Fraction of all requests that run to the end whatever the caches say (validation data).
    pub complete_fraction: f64,
    /// Disagreement with the base model allowed among a cache's hits.
    pub error_target: f64,
    /// Per-class thresholds need this many validation samples of the class; fewer: never hit.
    pub min_class_samples: usize,
    pub seed: u64,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            buffer: 1500,
            retrain_every: 200,
            steps: 40,
            batch_size: 64,
            lr: 0.05,
            complete_fraction: 0.2,
            error_target: 0.01,
            min_class_samples: 15,
            seed: 0,
        }
    }
}

struct Evidence {
    act: Tensor,
    logits: Tensor,
    /// The base model's class.
    class: i64,
    uniform: bool,
}

/// One round of retraining: what each cache scored on the held-out uniform samples.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub at_request: u64,
    pub version: u64,
    pub layers: Vec<LayerRound>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerRound {
    pub layer: String,
    pub validation: usize,
    pub serving_hits: usize,
    pub serving_wrong: usize,
    pub candidate_hits: usize,
    pub candidate_wrong: usize,
    pub promoted: bool,
    /// The serving version disagreed with the base model beyond the target: the plan's cache was
    /// restored before the candidate was judged.
    pub reverted: bool,
}

pub struct OnlineCaches {
    pub ee: EarlyExit,
    cfg: OnlineConfig,
    /// The plan's own caches (parameters and decision), restored when a learned version fails
    /// validation.
    original: Vec<(Vec<(String, Tensor)>, Decision)>,
    evidence: Vec<VecDeque<Evidence>>,
    since: usize,
    served: u64,
    pub version: u64,
    pub rounds: Vec<Round>,
    rng: StdRng,
}

impl OnlineCaches {
    pub fn new(ee: EarlyExit, cfg: OnlineConfig) -> Self {
        let n = ee.caches.len();
        let original = (0..n)
            .map(|c| {
                let params = ee.cache_params(c).into_iter().map(|(k, t)| (k, t.copy())).collect();
                (params, ee.caches[c].decision.clone())
            })
            .collect();
        Self {
            original,
            rng: StdRng::seed_from_u64(cfg.seed),
            ee,
            cfg,
            evidence: (0..n).map(|_| VecDeque::new()).collect(),
            since: 0,
            served: 0,
            version: 0,
            rounds: Vec::new(),
        }
    }

    /// Answers one normalised input `[1, C, H, W]` like `EarlyExit::infer`, collecting evidence and
    /// retraining when enough has arrived.
    pub fn serve(&mut self, x: &Tensor) -> Answer {
        self.served += 1;
        let uniform = self.rng.gen::<f64>() < self.cfg.complete_fraction;
        let answer = {
            let _g = tch::no_grad_guard();
            let (ee, m) = (&self.ee, &self.ee.model);
            let mut h = x.shallow_clone();
            let mut acts = Vec::new();
            let mut answer = None;
            let mut next = 0;
            for k in 0..m.num_stages() {
                h = m.run_stage(k, &h);
                while next < ee.caches.len() && ee.caches[next].stage == k {
                    acts.push(h.copy());
                    let c = &ee.caches[next];
                    if answer.is_none() {
                        if let Some((class, confidence)) = c.decision.hit(&probs_row(&c.head.forward_t(&h, false))) {
                            answer = Some(Answer {
                                class,
                                confidence,
                                exit: Exit::Cache(next),
                            });
                        }
                    }
                    next += 1;
                }
                if answer.is_some() && !uniform {
                    break;
                }
            }
            match answer {
                // A plain hit leaves no evidence, so no round can be due.
                Some(a) if !uniform => return a,
                Some(a) => {
                    self.keep(acts, &h, true);
                    a
                }
                None => {
                    let row = probs_row(&h);
                    let (class, confidence) = crate::outcomes::top1(&row);
                    self.keep(acts, &h, uniform);
                    Answer {
                        class,
                        confidence,
                        exit: Exit::Base,
                    }
                }
            }
        };
        self.after(answer)
    }

    fn after(&mut self, a: Answer) -> Answer {
        if self.since >= self.cfg.retrain_every {
            self.since = 0;
            self.retrain();
        }
        a
    }

    /// Keeps the evidence class-balanced: a class at its share of the buffer loses its oldest
    /// piece. A working set then sharpens the caches on its classes without making them forget
    /// the others (and answer them confidently wrong after the next shift).
    fn keep(&mut self, acts: Vec<Tensor>, logits: &Tensor, uniform: bool) {
        let class = logits.argmax(-1, false).int64_value(&[0]);
        let per_class = (self.cfg.buffer / self.ee.model.spec().num_classes as usize).max(1);
        for (c, act) in acts.into_iter().enumerate() {
            let ring = &mut self.evidence[c];
            if ring.iter().filter(|e| e.class == class).count() >= per_class {
                let oldest = ring.iter().position(|e| e.class == class).expect("counted");
                ring.remove(oldest);
            }
            ring.push_back(Evidence {
                act,
                logits: logits.copy(),
                class,
                uniform,
            });
        }
        self.since += 1;
    }

    /// Fine-tunes, re-calibrates and validates every cache; promotes the better ones.
    pub fn retrain(&mut self) -> &Round {
        let mut layers = Vec::new();
        let mut promoted_any = false;
        for c in 0..self.ee.caches.len() {
            let r = self.retrain_cache(c);
            promoted_any |= r.promoted;
            layers.push(r);
        }
        if promoted_any {
            self.version += 1;
        }
        self.rounds.push(Round {
            at_request: self.served,
            version: self.version,
            layers,
        });
        self.rounds.last().expect("pushed")
    }

    fn retrain_cache(&mut self, c: usize) -> LayerRound {
        let cache = &self.ee.caches[c];
        let ev = &self.evidence[c];
        // Uniform samples alternate between fitting thresholds (A) and validation (B); the rest,
        // and A, train.
        let uniform: Vec<usize> = (0..ev.len()).filter(|&i| ev[i].uniform).collect();
        let fit: Vec<usize> = uniform.iter().copied().step_by(2).collect();
        let val: Vec<usize> = uniform.iter().copied().skip(1).step_by(2).collect();
        let mut held_out = vec![false; ev.len()];
        val.iter().for_each(|&i| held_out[i] = true);
        let train: Vec<usize> = (0..ev.len()).filter(|&i| !held_out[i]).collect();
        let mut round = LayerRound {
            layer: cache.layer.clone(),
            validation: val.len(),
            serving_hits: 0,
            serving_wrong: 0,
            candidate_hits: 0,
            candidate_wrong: 0,
            promoted: false,
            reverted: false,
        };
        if train.len() < self.cfg.batch_size || val.is_empty() {
            return round;
        }
        let stack = |idx: &[usize], f: fn(&Evidence) -> &Tensor| {
            Tensor::cat(&idx.iter().map(|&i| f(&ev[i])).collect::<Vec<_>>(), 0)
        };
        let shape = &self.ee.model.stages()[cache.stage].output_shape;
        let classes = self.ee.model.spec().num_classes;
        // The candidate: a copy of the serving cache, fine-tuned.
        let vs = nn::VarStore::new(self.ee.model.device());
        let head = CacheHead::new(&vs.root(), cache.head.variant, [shape[1], shape[2], shape[3]], classes);
        copy_params(&named(&vs), &self.ee.cache_params(c));
        let x_train = stack(&train, |e| &e.act);
        let z_train = stack(&train, |e| &e.logits);
        let ms = x_train.square().mean(Kind::Float).double_value(&[]).max(1e-6);
        let lr = self.cfg.lr * (64.0 / (head.fan_in() as f64 * ms)).min(1.0);
        let mut opt = nn::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            wd: 5e-4,
            nesterov: true,
        }
        .build(&vs, lr)
        .expect("optimizer");
        let n = train.len() as i64;
        for _ in 0..self.cfg.steps {
            // Our own generator, not libtorch's global one: rounds are reproducible whatever else runs.
            let idx: Vec<i64> = (0..self.cfg.batch_size.min(train.len()))
                .map(|_| self.rng.gen_range(0..n))
                .collect();
            let idx = Tensor::from_slice(&idx);
            let z = head.forward_t(&x_train.index_select(0, &idx), true);
            let loss = distillation_loss(&z, &z_train.index_select(0, &idx), 0.5, 6.0);
            opt.backward_step(&loss);
        }
        // Thresholds on A, verdict on B.
        let rows = |h: &CacheHead, idx: &[usize]| -> Vec<Vec<f32>> {
            tch::no_grad(|| {
                let p = h.forward_t(&stack(idx, |e| &e.act), false).softmax(-1, Kind::Float);
                (0..idx.len() as i64)
                    .map(|i| Vec::<f32>::try_from(p.get(i)).expect("row"))
                    .collect()
            })
        };
        let base = |idx: &[usize]| -> Vec<usize> {
            idx.iter()
                .map(|&i| ev[i].logits.argmax(-1, false).int64_value(&[0]) as usize)
                .collect()
        };
        let decision = fit_thresholds(
            &rows(&head, &fit),
            &base(&fit),
            classes as usize,
            self.cfg.error_target,
            self.cfg.min_class_samples,
        );
        let truth = base(&val);
        let score = |rows: &[Vec<f32>], d: &Decision| {
            rows.iter().zip(&truth).fold((0, 0), |(h, w), (r, &b)| match d.hit(r) {
                Some((cls, _)) => (h + 1, w + (cls != b) as usize),
                None => (h, w),
            })
        };
        (round.serving_hits, round.serving_wrong) = score(&rows(&cache.head, &val), &cache.decision);
        // Accuracy guard: a learned version that now disagrees beyond the target (with a
        // one-sample slack) gives way to the plan's own cache.
        let over = round.serving_wrong as f64 > self.cfg.error_target * round.serving_hits as f64 + 1.0;
        if over && self.version > 0 {
            copy_params(&self.ee.cache_params(c), &self.original[c].0);
            self.ee.caches[c].decision = self.original[c].1.clone();
            round.reverted = true;
            let cache = &self.ee.caches[c];
            (round.serving_hits, round.serving_wrong) = score(&rows(&cache.head, &val), &cache.decision);
        }
        (round.candidate_hits, round.candidate_wrong) = score(&rows(&head, &val), &decision);
        let allowed = (self.cfg.error_target * round.candidate_hits as f64).max(round.serving_wrong as f64);
        round.promoted = round.candidate_hits > round.serving_hits && round.candidate_wrong as f64 <= allowed;
        if round.promoted {
            copy_params(&self.ee.cache_params(c), &named(&vs));
            self.ee.caches[c].decision = decision;
        }
        round
    }
}

fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies every parameter of `src` into the same-named one of `dst` (both sorted by name).
fn copy_params(dst: &[(String, Tensor)], src: &[(String, Tensor)]) {
    assert_eq!(
        dst.iter().map(|v| &v.0).collect::<Vec<_>>(),
        src.iter().map(|v| &v.0).collect::<Vec<_>>(),
        "the same cache architecture on both sides"
    );
    tch::no_grad(|| {
        for ((_, d), (_, s)) in dst.iter().zip(src) {
            d.shallow_clone().copy_(s);
        }
    });
}

/// Per-class thresholds on max-softmax for at most `target` disagreement among hits; a class with
/// fewer than `min_samples` fitting samples never hits.
fn fit_thresholds(rows: &[Vec<f32>], base: &[usize], classes: usize, target: f64, min_samples: usize) -> Decision {
    let mut per_class: Vec<Vec<(f32, bool)>> = vec![Vec::new(); classes];
    for (r, &b) in rows.iter().zip(base) {
        let (c, p) = crate::outcomes::top1(r);
        per_class[c].push((p, c != b));
    }
    Decision::Threshold {
        thresholds: per_class
            .iter_mut()
            .map(|v| {
                v.sort_by(|a, b| b.0.total_cmp(&a.0));
                if v.len() < min_samples {
                    2.0
                } else {
                    threshold_for(v, target)
                }
            })
            .collect(),
    }
}
