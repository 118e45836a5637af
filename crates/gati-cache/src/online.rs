//! Online learning: the plan's caches keep learning from the traffic they serve.
//!
//! Every request that runs the base model to the end leaves evidence: the activation at each
//! planned cache layer and the base model's logits. Misses always run to the end (biased: every
//! cache declined them); a random `complete_fraction` of *all* requests is also checked against the
//! base model after a hit (uniform: an unbiased sample of the traffic). Every `retrain_every` pieces
//! of evidence, each cache is fine-tuned by distillation on a class-balanced buffer of evidence; its
//! per-class thresholds are fitted on half of the most recent uniform samples (never trained on)
//! and it is judged on the other half against the serving version: it replaces it only if it
//! dominates it there (more hits, no more disagreements). Each promotion bumps the version.
//!
//! A learned version answers a class only where the plan's own cache ranks it first as well (a head
//! sharpened on the recent classes is confidently wrong on the next ones), and leaves the classes
//! it has not seen enough of to the plan's cache (`PLAN_DECIDES`). The plan stands as a candidate
//! in every round: a learned version that fails validation, or that the plan dominates, gives way.
//!
//! `Learner` holds the evidence and the serving version and runs the rounds; the trainer process
//! (gati-server) feeds it samples collected by the base worker and installs its promotions by RPC.
//! `OnlineCaches` is the same loop in one process (serving and learning on one thread).
//!
//! Accuracy guard: every uniform sample also scores the serving caches against the base model, so
//! each layer's live agreement among its hits is known with a Wilson interval; a layer whose
//! interval lies wholly below `1 - guard_error` gets raised thresholds, and if that is not enough,
//! is switched off until a retrained version passes validation. Drift: when the base model's
//! answers move to classes a learned version never certified (`drift_share` of the last
//! `drift_window` complete runs), the plan's cache serves again at once. And a candidate is
//! promoted only if it also stays within the target on class-balanced evidence held out from its
//! training (the classes the traffic is not showing now).

use crate::decision::{decide, threshold_for, Decision, NEVER, PLAN_DECIDES};
use crate::heads::CacheHead;
use crate::runtime::{copy_params, probs_rows, Answer, CacheState, EarlyExit, Hooks};
use crate::train::{distillation_loss, lr_scale, sgd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::VecDeque;
use tch::nn;
use tch::Tensor;

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
    /// Disagreement with the base model allowed among a cache's hits (what thresholds are fitted to).
    pub error_target: f64,
    /// Disagreement among a layer's live hits beyond which the guard switches it off (at least
    /// `error_target`; the plan's own caches are calibrated to the budget over all requests, so
    /// their hits may disagree up to budget / hit rate).
    pub guard_error: f64,
    /// Per-class thresholds need this many fitting samples of the class; with fewer, a learned
    /// version leaves the class to the plan's cache.
    pub min_class_samples: usize,
    /// Recent uniform samples kept per cache for threshold fitting and validation.
    pub recent: usize,
    /// Uniform samples per layer behind the live agreement estimate (most recent hits).
    pub guard_window: usize,
    /// The guard acts only on at least this many hits in its window.
    pub guard_min_hits: usize,
    /// Drift: among the last `drift_window` complete runs, at least this share of base answers in
    /// classes a learned version never certified puts the plan's cache back at once.
    pub drift_share: f64,
    pub drift_window: usize,
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
            guard_error: 0.01,
            min_class_samples: 15,
            recent: 400,
            guard_window: 200,
            guard_min_hits: 20,
            drift_share: 0.2,
            drift_window: 40,
            seed: 0,
        }
    }
}

struct Evidence {
    /// Which complete run (in arrival order).
    seq: u64,
    act: Tensor,
    logits: Tensor,
    /// The base model's class.
    class: i64,
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
    /// The candidate's hits and disagreements on the class-balanced evidence held out from its
    /// training (every class seen, not only today's); over the target, it is not promoted.
    pub balanced_hits: usize,
    pub balanced_wrong: usize,
    pub promoted: bool,
    /// The serving version disagreed with the base model beyond the target: the plan's cache was
    /// restored before the candidate was judged.
    pub reverted: bool,
}

/// A layer's live agreement with the base model among its hits on uniform samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LiveAgreement {
    pub hits: usize,
    pub agreement: f64,
    /// 95% Wilson interval.
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuardAction {
    RaisedThresholds,
    Disabled,
    /// The traffic moved to classes the learned version never certified: the plan's cache serves.
    RestoredPlan,
}

impl gati_core::names::Named for GuardAction {
    fn what() -> &'static str {
        "guard action"
    }
}

impl LiveAgreement {
    /// The guard's trigger: enough hits, and agreement below `target` with 95% confidence (the
    /// whole interval under it).
    pub fn below(&self, target: f64, min_hits: usize) -> bool {
        self.hits >= min_hits && self.upper < target
    }
}

/// Dominance on the same held-out samples, `(hits, disagreements)` each: more hits and no more
/// disagreements. What promotes a candidate and what makes the plan's cache replace a learned one.
pub fn dominates(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 > b.0 && a.1 <= b.1
}

/// `wrong` disagreements among `hits` are within `target`, with a one-sample slack (a few dozen
/// held-out samples cannot certify a rate; one disagreement more than the rate allows is noise).
fn within(target: f64, hits: usize, wrong: usize) -> bool {
    wrong as f64 <= target * hits as f64 + 1.0
}

/// The 95% Wilson score interval of `k` successes in `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n, p) = (1.96f64, n as f64, k as f64 / n as f64);
    let mid = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((mid - half).max(0.0), (mid + half).min(1.0))
}

pub struct Learner {
    /// The serving version's caches: what candidates are judged against, and what is installed.
    pub ee: EarlyExit,
    cfg: OnlineConfig,
    evidence: Vec<VecDeque<Evidence>>,
    /// Per cache: the most recent uniform samples (validation and threshold fitting).
    recent: Vec<VecDeque<Evidence>>,
    /// Per cache: did each of its recent hits on a uniform sample agree with the base model?
    live: Vec<VecDeque<bool>>,
    /// Per cache: the guard already raised its thresholds (next time it switches it off).
    struck: Vec<bool>,
    /// Per cache: was each recent complete run's base class one the serving version left to the
    /// plan (not certified)?
    novel: Vec<VecDeque<bool>>,
    since: usize,
    seen: u64,
    /// Learned versions put back to the plan's cache because the traffic drifted.
    pub drifts: u64,
    rng: StdRng,
}

impl Learner {
    pub fn new(ee: EarlyExit, cfg: OnlineConfig) -> Self {
        let n = ee.caches.len();
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            ee,
            cfg,
            evidence: (0..n).map(|_| VecDeque::new()).collect(),
            recent: (0..n).map(|_| VecDeque::new()).collect(),
            live: (0..n).map(|_| VecDeque::new()).collect(),
            struck: vec![false; n],
            novel: (0..n).map(|_| VecDeque::new()).collect(),
            since: 0,
            seen: 0,
            drifts: 0,
        }
    }

    /// One complete run: the activation at every cache's layer (`[1, C, H, W]`, in plan order),
    /// the base model's logits `[1, classes]`, and whether it was sampled uniformly.
    pub fn add(&mut self, acts: Vec<Tensor>, logits: &Tensor, uniform: bool) {
        assert_eq!(acts.len(), self.ee.caches.len(), "one activation per cache");
        self.seen += 1;
        let class = logits.argmax(-1, false).int64_value(&[0]);
        if uniform {
            for (c, act) in acts.iter().enumerate() {
                let (_, hit) = EarlyExit::consult(&self.ee.caches[c], act);
                if let Some((cls, _)) = hit {
                    let w = &mut self.live[c];
                    w.push_back(cls as i64 == class);
                    if w.len() > self.cfg.guard_window {
                        w.pop_front();
                    }
                }
            }
        }
        self.keep(acts, logits, class, uniform);
        self.note_novelty(class);
    }

    /// Notes, per cache, whether the base model's answer is a class the serving version left to
    /// the plan (never certified).
    fn note_novelty(&mut self, class: i64) {
        for (cache, w) in self.ee.caches.iter().zip(&mut self.novel) {
            let learned = cache.decision != cache.plan_decision;
            w.push_back(learned && cache.decision.plan_decides(class as usize));
            if w.len() > self.cfg.drift_window {
                w.pop_front();
            }
        }
    }

    /// A learned version is validated on the classes the traffic showed. When the base model's
    /// answers move to classes it never certified, its hits there are images of new classes given
    /// an old class's name, and uniform samples show too few of them too late.
    fn drifted(&self, c: usize) -> bool {
        let novel = self.novel[c].iter().filter(|&&v| v).count();
        novel as f64 >= self.cfg.drift_share * self.cfg.drift_window as f64
    }

    /// Cache `c` serves the plan's own head and decision again, judged afresh.
    fn restore_plan(&mut self, c: usize) {
        serve_plan(&mut self.ee, c);
        self.start_over(c);
    }

    /// Cache `c`'s live estimates start over (a new version serves).
    fn start_over(&mut self, c: usize) {
        self.live[c].clear();
        self.novel[c].clear();
        self.struck[c] = false;
    }

    /// Keeps the evidence class-balanced: a class at its share of the buffer loses its oldest
    /// piece. A working set then sharpens the caches on its classes without making them forget
    /// the others (and answer them confidently wrong after the next shift). Uniform samples are
    /// also kept in arrival order, the most recent ones.
    fn keep(&mut self, acts: Vec<Tensor>, logits: &Tensor, class: i64, uniform: bool) {
        let per_class = (self.cfg.buffer / self.ee.model.spec().num_classes as usize).max(1);
        let seq = self.seen;
        for (c, act) in acts.into_iter().enumerate() {
            let piece = || Evidence {
                seq,
                act: act.shallow_clone(),
                logits: logits.shallow_clone(),
                class,
            };
            if uniform {
                self.recent[c].push_back(piece());
                if self.recent[c].len() > self.cfg.recent {
                    self.recent[c].pop_front();
                }
            }
            let ring = &mut self.evidence[c];
            if ring.iter().filter(|e| e.class == class).count() >= per_class {
                let oldest = ring.iter().position(|e| e.class == class).expect("counted");
                ring.remove(oldest);
            }
            ring.push_back(piece());
        }
        self.since += 1;
    }

    /// Enough new evidence for a round.
    pub fn due(&self) -> bool {
        self.since >= self.cfg.retrain_every
    }

    /// Each layer's live agreement with the base model.
    pub fn live(&self) -> Vec<LiveAgreement> {
        self.live
            .iter()
            .map(|w| {
                let agree = w.iter().filter(|&&a| a).count();
                let (lower, upper) = wilson(agree, w.len());
                LiveAgreement {
                    hits: w.len(),
                    agreement: if w.is_empty() {
                        1.0
                    } else {
                        agree as f64 / w.len() as f64
                    },
                    lower,
                    upper,
                }
            })
            .collect()
    }

    /// The accuracy guard, for every enabled cache whose live agreement is, with 95% confidence,
    /// below `1 - guard_error`: the first time, its thresholds are raised (re-fitted on the recent
    /// uniform samples, never lowered); if it fails again before a retrained version replaces it,
    /// it is switched off. A learned version the traffic drifted away from gives way to the plan's
    /// cache. Returns what it did, per layer.
    pub fn guard(&mut self) -> Vec<(String, GuardAction)> {
        let target = 1.0 - self.cfg.guard_error.max(self.cfg.error_target);
        let live = self.live();
        let mut acted = Vec::new();
        for (c, l) in live.iter().enumerate() {
            if self.drifted(c) {
                // The plan's cache, calibrated on every class, serves until a round certifies the
                // new ones.
                self.restore_plan(c);
                self.drifts += 1;
                acted.push((self.ee.caches[c].layer.clone(), GuardAction::RestoredPlan));
                continue;
            }
            if !self.ee.caches[c].enabled || !l.below(target, self.cfg.guard_min_hits) {
                continue;
            }
            let action = match self.raised_thresholds(c) {
                Some(d) if !self.struck[c] => {
                    self.ee.caches[c].decision = d;
                    self.struck[c] = true;
                    GuardAction::RaisedThresholds
                }
                _ => {
                    self.ee.caches[c].enabled = false;
                    self.struck[c] = false;
                    GuardAction::Disabled
                }
            };
            self.live[c].clear();
            acted.push((self.ee.caches[c].layer.clone(), action));
        }
        acted
    }

    /// Cache `c`'s thresholds re-fitted on its recent uniform samples, each at least
    /// the serving one (None for a selector decision).
    fn raised_thresholds(&self, c: usize) -> Option<Decision> {
        let cache = &self.ee.caches[c];
        let Decision::Threshold { thresholds } = &cache.decision else {
            return None;
        };
        let ev: Vec<&Evidence> = self.recent[c].iter().collect();
        if ev.is_empty() {
            return None;
        }
        let rows = softmax_rows(
            &cache.head,
            &Tensor::cat(&ev.iter().map(|e| &e.act).collect::<Vec<_>>(), 0),
        );
        let base: Vec<usize> = ev.iter().map(|e| e.class as usize).collect();
        let refit = fit_thresholds(
            &rows,
            &base,
            thresholds.len(),
            self.cfg.error_target,
            self.cfg.min_class_samples,
            &cache.decision,
        );
        let Decision::Threshold { thresholds: new } = refit else {
            return None;
        };
        Some(Decision::Threshold {
            thresholds: thresholds.iter().zip(&new).map(|(a, b)| a.max(*b)).collect(),
        })
    }

    /// Serves `states` from now on (a pin or rollback); the live estimates start over.
    pub fn reset_to(&mut self, states: &[CacheState]) -> anyhow::Result<()> {
        self.ee.install(states)?;
        self.live.iter_mut().for_each(VecDeque::clear);
        Ok(())
    }

    /// Fine-tunes, re-calibrates and validates every cache; promotes the better ones.
    pub fn round(&mut self) -> Round {
        self.since = 0;
        let mut layers = Vec::new();
        for c in 0..self.ee.caches.len() {
            let r = self.retrain_cache(c);
            if r.promoted || r.reverted {
                self.start_over(c);
            }
            layers.push(r);
        }
        Round {
            at_request: self.seen,
            version: 0,
            layers,
        }
    }

    fn retrain_cache(&mut self, c: usize) -> LayerRound {
        let cache = &self.ee.caches[c];
        // The recent uniform samples (the traffic as it is now) alternate between fitting
        // thresholds (A) and validation (B); the class-balanced evidence without them trains.
        // Thresholds fitted on samples the candidate trained on would be optimistic, and errors
        // judged on every class alike would hide those on the classes being served.
        let recent = &self.recent[c];
        let held: std::collections::HashSet<u64> = recent.iter().map(|e| e.seq).collect();
        let ev: Vec<&Evidence> = recent
            .iter()
            .chain(self.evidence[c].iter().filter(|e| !held.contains(&e.seq)))
            .collect();
        let fit: Vec<usize> = (0..recent.len()).step_by(2).collect();
        let val: Vec<usize> = (1..recent.len()).step_by(2).collect();
        // Every fourth piece of the class-balanced buffer is held out from training: the classes
        // the traffic is not showing now (the next shift's) judge the candidate there.
        let (held_out, train): (Vec<usize>, Vec<usize>) =
            (recent.len()..ev.len()).partition(|&i| ev[i].seq.is_multiple_of(4));
        let mut round = LayerRound {
            layer: cache.layer.clone(),
            validation: val.len(),
            serving_hits: 0,
            serving_wrong: 0,
            candidate_hits: 0,
            candidate_wrong: 0,
            balanced_hits: 0,
            balanced_wrong: 0,
            promoted: false,
            reverted: false,
        };
        if train.len() < self.cfg.batch_size || val.is_empty() {
            return round;
        }
        let stack = |idx: &[usize], f: fn(&Evidence) -> &Tensor| {
            Tensor::cat(&idx.iter().map(|&i| f(ev[i])).collect::<Vec<_>>(), 0)
        };
        let shape = &self.ee.model.stages()[cache.stage].output_shape;
        let classes = self.ee.model.spec().num_classes;
        // The candidate: a copy of the serving cache, fine-tuned.
        let vs = nn::VarStore::new(self.ee.model.device());
        let head = CacheHead::new(&vs.root(), cache.head.variant, [shape[1], shape[2], shape[3]], classes);
        copy_params(&named(&vs), &self.ee.cache_params(c));
        let x_train = stack(&train, |e| &e.act);
        let z_train = stack(&train, |e| &e.logits);
        let lr = self.cfg.lr * head.lr_factor() * lr_scale(head.fan_in(), &x_train);
        let mut opt = sgd(&vs, lr, 0.9, 5e-4);
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
        let rows = |h: &CacheHead, idx: &[usize]| {
            if idx.is_empty() {
                return Vec::new();
            }
            softmax_rows(h, &stack(idx, |e| &e.act))
        };
        let base = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&i| ev[i].class as usize).collect() };
        let decision = fit_thresholds(
            &rows(&head, &fit),
            &base(&fit),
            classes as usize,
            self.cfg.error_target,
            self.cfg.min_class_samples,
            // A class the traffic has barely shown: the candidate leaves it to the plan's cache (a
            // cache sharpened on other classes is confidently wrong on it; the plan's is as good as
            // it was statically).
            &Decision::Threshold {
                thresholds: vec![PLAN_DECIDES; classes as usize],
            },
        );
        let truth = base(&val);
        let plan_decision = cache.plan_decision.clone();
        let plan_rows = rows(&cache.plan_head, &val);
        let held_plan_rows = rows(&cache.plan_head, &held_out);
        let decided = |rows: &[Vec<f32>], d: &Decision, plan_rows: &[Vec<f32>], truth: &[usize]| {
            rows.iter()
                .zip(plan_rows)
                .zip(truth)
                .fold((0, 0), |(h, w), ((r, p), &b)| {
                    match decide(d, r, &plan_decision, || p.clone()).1 {
                        Some((cls, _)) => (h + 1, w + (cls != b) as usize),
                        None => (h, w),
                    }
                })
        };
        let score = |rows: &[Vec<f32>], d: &Decision, enabled: bool| {
            if !enabled {
                return (0, 0);
            }
            decided(rows, d, &plan_rows, &truth)
        };
        (round.serving_hits, round.serving_wrong) = score(&rows(&cache.head, &val), &cache.decision, cache.enabled);
        // The plan's own cache stands as a candidate too: a learned version that disagrees beyond
        // the target (with a one-sample slack), or that the plan dominates, gives way to it.
        let (plan_hits, plan_wrong) = score(&plan_rows, &plan_decision, true);
        let over = !within(self.cfg.error_target, round.serving_hits, round.serving_wrong);
        let plan_better = dominates((plan_hits, plan_wrong), (round.serving_hits, round.serving_wrong));
        let learned = cache.decision != plan_decision;
        if learned && cache.enabled && (over || plan_better) {
            serve_plan(&mut self.ee, c);
            round.reverted = true;
            (round.serving_hits, round.serving_wrong) = (plan_hits, plan_wrong);
        }
        (round.candidate_hits, round.candidate_wrong) = score(&rows(&head, &val), &decision, true);
        // On the held-out balanced evidence, the candidate must stay within the target like the
        // plan (a head sharpened on today's classes answers tomorrow's confidently wrong).
        let (all_hits, all_wrong) = decided(&rows(&head, &held_out), &decision, &held_plan_rows, &base(&held_out));
        round.balanced_hits = all_hits;
        round.balanced_wrong = all_wrong;
        let steady = within(self.cfg.error_target, all_hits, all_wrong);
        // Dominance on the same held-out samples: more hits, no more disagreements. (A target rate
        // on a few dozen samples is no evidence at a 1% budget; a paired comparison is.)
        round.promoted = steady
            && dominates(
                (round.candidate_hits, round.candidate_wrong),
                (round.serving_hits, round.serving_wrong),
            );
        if round.promoted {
            self.ee.set_params(c, &named(&vs));
            self.ee.caches[c].decision = decision;
            self.ee.caches[c].enabled = true;
        }
        round
    }
}

/// Serving and learning in one process, on one thread: `serve` answers like `EarlyExit::infer`,
/// collects evidence, and runs a round (installing its promotions at once) when one is due.
pub struct OnlineCaches {
    pub learner: Learner,
    complete_fraction: f64,
    served: u64,
    /// Rounds that promoted at least one cache.
    pub version: u64,
    pub rounds: Vec<Round>,
    rng: StdRng,
}

impl OnlineCaches {
    pub fn new(ee: EarlyExit, cfg: OnlineConfig) -> Self {
        Self {
            complete_fraction: cfg.complete_fraction,
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed),
            learner: Learner::new(ee, cfg),
            served: 0,
            version: 0,
            rounds: Vec::new(),
        }
    }

    /// Answers one normalised input `[1, C, H, W]`, collecting evidence and retraining when
    /// enough has arrived.
    pub fn serve(&mut self, x: &Tensor) -> Answer {
        self.served += 1;
        let uniform = self.rng.gen::<f64>() < self.complete_fraction;
        let ee = &self.learner.ee;
        let mut hooks = Collecting {
            stages: ee.caches.iter().map(|c| c.stage).collect(),
            acts: Vec::new(),
            uniform,
        };
        let walked = ee.walk(x, 0, &mut hooks).pop().expect("one sample");
        let answer = walked.answer();
        // A plain hit leaves no evidence, so no round can be due.
        let Some(logits) = walked.logits else {
            return answer;
        };
        self.learner.add(hooks.acts, &logits.unsqueeze(0), uniform);
        self.learner.guard();
        if self.learner.due() {
            let mut round = self.learner.round();
            round.at_request = self.served;
            if round.layers.iter().any(|l| l.promoted) {
                self.version += 1;
            }
            round.version = self.version;
            self.rounds.push(round);
        }
        answer
    }
}

/// What online serving adds to the early-exit loop: the activation at every cache's stage, and a
/// uniformly sampled request runs to the end after its hit (validation evidence).
struct Collecting {
    stages: Vec<usize>,
    acts: Vec<Tensor>,
    uniform: bool,
}

impl Hooks for Collecting {
    fn after_stage(&mut self, k: usize, h: &Tensor, _rows: &[usize], _took: std::time::Duration) {
        for _ in self.stages.iter().filter(|&&s| s == k) {
            self.acts.push(h.shallow_clone());
        }
    }

    fn run_on_after_hit(&mut self, _sample: usize, _hit: &crate::runtime::Hit) -> bool {
        self.uniform
    }
}

/// Cache `c` of `ee` serves the plan's own head and decision.
fn serve_plan(ee: &mut EarlyExit, c: usize) {
    let plan = ee.plan_params(c);
    ee.set_params(c, &plan);
    ee.caches[c].decision = ee.caches[c].plan_decision.clone();
}

/// Softmax rows of `head` on a batch of activations.
fn softmax_rows(head: &CacheHead, x: &Tensor) -> Vec<Vec<f32>> {
    tch::no_grad(|| probs_rows(&head.forward_t(x, false)))
}

fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Per-class thresholds on max-softmax for at most `target` disagreement among hits. A class with
/// fewer than `min_samples` fitting samples (one the traffic has not shown much of yet) gets the
/// stricter of the threshold fitted on all classes pooled and its `fallback` threshold.
fn fit_thresholds(
    rows: &[Vec<f32>],
    base: &[usize],
    classes: usize,
    target: f64,
    min_samples: usize,
    fallback: &Decision,
) -> Decision {
    let mut per_class: Vec<Vec<(f32, bool)>> = vec![Vec::new(); classes];
    for (r, &b) in rows.iter().zip(base) {
        let (c, p) = crate::outcomes::top1(r);
        per_class[c].push((p, c != b));
    }
    let mut pooled: Vec<(f32, bool)> = per_class.concat();
    pooled.sort_by(|a, b| b.0.total_cmp(&a.0));
    let pooled = if pooled.len() < min_samples {
        NEVER
    } else {
        threshold_for(&pooled, target)
    };
    let fallback = |c: usize| match fallback {
        Decision::Threshold { thresholds } => thresholds[c],
        Decision::Selector { .. } => NEVER,
    };
    Decision::Threshold {
        thresholds: per_class
            .iter_mut()
            .enumerate()
            .map(|(c, v)| {
                v.sort_by(|a, b| b.0.total_cmp(&a.0));
                if v.len() < min_samples {
                    pooled.max(fallback(c))
                } else {
                    threshold_for(v, target)
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_known_values() {
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson(100, 100);
        assert!((lo - 0.9630).abs() < 1e-3 && hi > 1.0 - 1e-9, "{lo} {hi}");
        let (lo, hi) = wilson(0, 20);
        assert!(lo == 0.0 && (hi - 0.1611).abs() < 1e-3, "{lo} {hi}");
        // Narrower with more samples at the same rate.
        let (a, b) = (wilson(9, 10), wilson(900, 1000));
        assert!(b.1 - b.0 < a.1 - a.0);
    }

    #[test]
    fn the_guard_acts_only_on_enough_hits_confidently_below_target() {
        let live = |agree: usize, hits: usize| {
            let (lower, upper) = wilson(agree, hits);
            LiveAgreement {
                hits,
                agreement: agree as f64 / hits as f64,
                lower,
                upper,
            }
        };
        // 90% agreement on 200 hits is confidently below 98%; on 10 hits it is not evidence.
        assert!(live(180, 200).below(0.98, 20));
        assert!(!live(9, 10).below(0.98, 20));
        assert!(!live(9, 10).below(0.98, 5), "9 of 10 cannot exclude 98%");
        // 97% on 200 hits: the interval still reaches 98%.
        assert!(!live(194, 200).below(0.98, 20));
    }

    #[test]
    fn dominance_needs_more_hits_and_no_more_disagreements() {
        assert!(dominates((10, 1), (9, 1)));
        assert!(dominates((10, 0), (9, 1)));
        assert!(!dominates((10, 2), (9, 1)), "more hits bought with more disagreement");
        assert!(!dominates((9, 0), (9, 1)), "equal hits do not promote");
        assert!(!dominates((0, 0), (0, 0)));
    }
}
