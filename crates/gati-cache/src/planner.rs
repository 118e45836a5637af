//! The planner: which layers get a cache, which variant, and which hit-decision setting, so that
//! the expected mean latency is lowest while the fidelity loss stays within budget.
//!
//! Exits interact (a later cache only sees what earlier ones missed), so every configuration is
//! scored by simulating each calibration sample through it. Search: greedy local search over three
//! moves — add a cache at a free layer, change a chosen layer's variant/setting, remove a cache —
//! taking the feasible move that lowers expected latency most, run twice (ranking moves by latency
//! saved, and by latency saved per newly wrong sample) and keeping the better end point. Adding a
//! cache is scored incrementally from per-sample state in O(N), so a ResNet-56 instance
//! (27 layers × 5 variants × 20 settings, 5,000 samples) plans in well under a second.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Caches run in the base model's thread: their cost is on the critical path.
    Inline,
    /// Caches run beside the base model: the base pays a send per consulted cache; a hit answers
    /// after transfer + cache time (never later than the base would have).
    Distributed,
}

impl gati_core::names::Named for Mode {
    fn what() -> &'static str {
        "mode"
    }
}

/// Per-sample result of one head under one decision setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    Miss = 0,
    /// Hit with the base model's answer.
    Agree = 1,
    /// Hit with another answer (costs fidelity).
    Disagree = 2,
}

/// One candidate head and its outcomes under each setting.
#[derive(Debug, Clone)]
pub struct HeadOption {
    pub stage: usize,
    pub cost_ms: f64,
    pub bytes: u64,
    /// Inline mode: the cache runs on its own thread beside the base model (`beside::Beside`);
    /// `cost_ms` is its latency there, from hand-off to a usable answer.
    pub beside: bool,
    /// `settings[j][i]`: outcome of sample `i` under setting `j`.
    pub settings: Vec<Vec<Outcome>>,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub samples: usize,
    /// Batch-1 latency of each base stage.
    pub stage_ms: Vec<f64>,
    pub options: Vec<HeadOption>,
    pub mode: Mode,
    /// Distributed mode: time the base worker spends sending one activation.
    pub send_ms: f64,
    /// Distributed mode: network + queueing delay before a cache worker starts.
    pub transfer_ms: f64,
    /// Inline mode: how much longer the base model's stages take while a cache runs beside it
    /// (`plan::BesideCosts::slowdown_ms`).
    pub beside_slowdown_ms: f64,
    /// Fidelity-loss budget (fraction of samples).
    pub budget: f64,
    /// Safety margin on the budget, in standard deviations of the disagreement count (0: none).
    pub margin_sigmas: f64,
    pub memory_budget_bytes: Option<u64>,
}

/// A chosen cache: option index and setting index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub option: usize,
    pub setting: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub mean_latency_ms: f64,
    pub base_latency_ms: f64,
    pub fidelity_loss: f64,
    /// Per chosen cache (in stage order): fraction of all samples it answers.
    pub hit_rates: Vec<f64>,
    pub wrong: usize,
}

impl Problem {
    fn cum(&self) -> Vec<f64> {
        cumulative(&self.stage_ms)
    }

    fn base_total(&self) -> f64 {
        self.stage_ms.iter().sum()
    }

    /// (cost on the base's critical path, extra delay before a hit's answer).
    fn costs(&self, o: &HeadOption) -> (f64, f64) {
        match self.mode {
            // Every request that reaches it pays the base model's slowdown; a hit answers
            // `cost_ms` after the hand-off (the slowdown is part of what comes after).
            Mode::Inline if o.beside => (self.beside_slowdown_ms, o.cost_ms - self.beside_slowdown_ms),
            Mode::Inline => (o.cost_ms, 0.0),
            Mode::Distributed => (self.send_ms, self.transfer_ms + o.cost_ms),
        }
    }

    /// Disagreements a plan may make on the calibration samples: the largest w with
    /// w + z·√w ≤ budget·n (z = `margin_sigmas`), so that the loss on unseen requests, whose count
    /// of disagreements varies by about √w, stays within budget rather than exactly at it.
    fn allowed_wrong(&self) -> usize {
        let cap = self.budget * self.samples as f64 + 1e-9;
        let mut w = cap.floor() as usize;
        while w > 0 && w as f64 + self.margin_sigmas * (w as f64).sqrt() > cap {
            w -= 1;
        }
        w
    }

    fn memory_ok(&self, config: &[Choice]) -> bool {
        self.memory_budget_bytes
            .is_none_or(|m| config.iter().map(|c| self.options[c.option].bytes).sum::<u64>() <= m)
    }

    /// Simulates every sample through `config` (any order; sorted by stage here).
    pub fn evaluate(&self, config: &[Choice]) -> Evaluation {
        let mut config = config.to_vec();
        config.sort_by_key(|c| self.options[c.option].stage);
        let st = State::new(self, &config);
        let mut hits = vec![0usize; config.len()];
        for &e in &st.exit {
            if e != usize::MAX {
                hits[e] += 1;
            }
        }
        let n = self.samples.max(1) as f64;
        Evaluation {
            mean_latency_ms: st.lat.iter().sum::<f64>() / n,
            base_latency_ms: self.base_total(),
            fidelity_loss: st.wrong_total as f64 / n,
            hit_rates: hits.iter().map(|&h| h as f64 / n).collect(),
            wrong: st.wrong_total,
        }
    }

    /// Greedy local search (see the module docs); returns the chosen caches in stage order.
    pub fn solve(&self) -> Vec<Choice> {
        let hits = self.hit_lists();
        // The two rankings are independent searches: run them on two threads.
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| self.local_search(false, &hits));
            let b = self.local_search(true, &hits);
            (a.join().expect("planner thread"), b)
        });
        let (ea, eb) = (self.evaluate(&a), self.evaluate(&b));
        if (eb.mean_latency_ms, eb.wrong) < (ea.mean_latency_ms, ea.wrong) {
            b
        } else {
            a
        }
    }

    /// Per option and setting: the samples it answers, and whether it disagrees with the base.
    fn hit_lists(&self) -> Vec<Vec<Vec<(u32, bool)>>> {
        self.options
            .iter()
            .map(|o| {
                o.settings
                    .iter()
                    .map(|v| {
                        v.iter()
                            .enumerate()
                            .filter(|(_, &x)| x != Outcome::Miss)
                            .map(|(i, &x)| (i as u32, x == Outcome::Disagree))
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn local_search(&self, per_wrong: bool, hits: &[Vec<Vec<(u32, bool)>>]) -> Vec<Choice> {
        let allowed = self.allowed_wrong();
        let mut config: Vec<Choice> = Vec::new();
        for _ in 0..1000 {
            let cur = State::new(self, &config);
            let cur_lat: f64 = cur.lat.iter().sum();
            let mut best: Option<(f64, Vec<Choice>)> = None;
            let mut consider = |new_lat: f64, new_wrong: usize, cand: Vec<Choice>| {
                let saved = cur_lat - new_lat;
                // Relative: two settings that answer the same samples differ by rounding in these
                // sums, and an absolute tolerance let the search swap them back and forth.
                if new_wrong > allowed || saved <= 1e-9 * cur_lat.abs().max(1.0) || !self.memory_ok(&cand) {
                    return;
                }
                let score = if per_wrong {
                    saved / (1.0 + new_wrong.saturating_sub(cur.wrong_total) as f64)
                } else {
                    saved
                };
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, cand));
                }
            };
            let taken: Vec<usize> = config.iter().map(|c| self.options[c.option].stage).collect();
            // Add a cache at a free layer.
            for (oi, o) in self.options.iter().enumerate() {
                if taken.contains(&o.stage) {
                    continue;
                }
                for (j, answered) in hits[oi].iter().enumerate() {
                    let (dl, w) = cur.delta_add(self, oi, answered);
                    consider(cur_lat + dl, w, with(&config, Choice { option: oi, setting: j }));
                }
            }
            // Change or remove a chosen cache.
            for (ci, c) in config.iter().enumerate() {
                let mut rest = config.clone();
                rest.remove(ci);
                let without = State::new(self, &rest);
                let rest_lat: f64 = without.lat.iter().sum();
                consider(rest_lat, without.wrong_total, rest.clone());
                let stage = self.options[c.option].stage;
                for (oi, _) in self.options.iter().enumerate().filter(|(_, o)| o.stage == stage) {
                    for (j, answered) in hits[oi].iter().enumerate() {
                        if oi == c.option && j == c.setting {
                            continue;
                        }
                        let (dl, w) = without.delta_add(self, oi, answered);
                        consider(rest_lat + dl, w, with(&rest, Choice { option: oi, setting: j }));
                    }
                }
            }
            match best {
                Some((_, next)) => config = next,
                None => break,
            }
        }
        config.sort_by_key(|c| self.options[c.option].stage);
        config
    }

    /// The optimum by enumerating every configuration (for checking the search on small instances).
    pub fn exhaustive(&self) -> Vec<Choice> {
        let mut stages: Vec<usize> = self.options.iter().map(|o| o.stage).collect();
        stages.sort();
        stages.dedup();
        let per_stage: Vec<Vec<Option<Choice>>> = stages
            .iter()
            .map(|&s| {
                let mut v = vec![None];
                for (oi, o) in self.options.iter().enumerate().filter(|(_, o)| o.stage == s) {
                    v.extend((0..o.settings.len()).map(|j| Some(Choice { option: oi, setting: j })));
                }
                v
            })
            .collect();
        let allowed = self.allowed_wrong();
        let mut best: Option<(f64, usize, Vec<Choice>)> = None;
        let mut idx = vec![0usize; per_stage.len()];
        loop {
            let config: Vec<Choice> = idx.iter().zip(&per_stage).filter_map(|(&i, v)| v[i]).collect();
            if self.memory_ok(&config) {
                let st = State::new(self, &config);
                let lat: f64 = st.lat.iter().sum();
                if st.wrong_total <= allowed && best.as_ref().is_none_or(|b| (lat, st.wrong_total) < (b.0, b.1)) {
                    best = Some((lat, st.wrong_total, config));
                }
            }
            // Next combination (odometer).
            let mut k = 0;
            while k < idx.len() {
                idx[k] += 1;
                if idx[k] < per_stage[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
            if k == idx.len() {
                break;
            }
        }
        best.map(|b| b.2).unwrap_or_default()
    }
}

/// Running sums: the latency of the base model up to and including each stage.
pub fn cumulative(stage_ms: &[f64]) -> Vec<f64> {
    stage_ms
        .iter()
        .scan(0.0, |acc, &x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

fn with(config: &[Choice], c: Choice) -> Vec<Choice> {
    let mut v = config.to_vec();
    v.push(c);
    v
}

/// Per-sample state of a configuration (sorted by stage).
struct State {
    /// Index into the config of the cache that answered, or `usize::MAX` (the base answered).
    exit: Vec<usize>,
    /// Stage at which the sample left (`usize::MAX` for the base).
    exit_stage: Vec<usize>,
    lat: Vec<f64>,
    wrong: Vec<bool>,
    wrong_total: usize,
    /// (stage, critical-path cost) of each chosen cache, in stage order.
    crit: Vec<(usize, f64)>,
    cum: Vec<f64>,
    /// Per stage: samples still running after it.
    alive_after: Vec<usize>,
}

impl State {
    fn new(p: &Problem, config: &[Choice]) -> Self {
        let mut config = config.to_vec();
        config.sort_by_key(|c| p.options[c.option].stage);
        let cum = p.cum();
        let total = p.base_total();
        let crit: Vec<(usize, f64)> = config
            .iter()
            .map(|c| (p.options[c.option].stage, p.costs(&p.options[c.option]).0))
            .collect();
        let crit_all: f64 = crit.iter().map(|c| c.1).sum();
        let n = p.samples;
        let (mut exit, mut exit_stage, mut lat, mut wrong) =
            (vec![usize::MAX; n], vec![usize::MAX; n], vec![0.0; n], vec![false; n]);
        for i in 0..n {
            let mut acc = 0.0;
            lat[i] = total + crit_all;
            for (ci, c) in config.iter().enumerate() {
                let o = &p.options[c.option];
                let (cr, delay) = p.costs(o);
                acc += cr;
                let out = o.settings[c.setting][i];
                if out != Outcome::Miss {
                    lat[i] = (cum[o.stage] + acc + delay).min(total + crit_all);
                    exit[i] = ci;
                    exit_stage[i] = o.stage;
                    wrong[i] = out == Outcome::Disagree;
                    break;
                }
            }
        }
        let wrong_total = wrong.iter().filter(|&&w| w).count();
        let mut left_at = vec![0usize; cum.len()];
        for &e in exit_stage.iter().filter(|&&e| e != usize::MAX) {
            left_at[e] += 1;
        }
        let mut alive = n;
        let alive_after = left_at
            .iter()
            .map(|&l| {
                alive -= l;
                alive
            })
            .collect();
        Self {
            exit,
            exit_stage,
            lat,
            wrong,
            wrong_total,
            crit,
            cum,
            alive_after,
        }
    }

    /// (change in summed latency, new wrong count) of adding option `oi` at a free stage, given the
    /// samples it answers. Every sample still running at that stage pays the cache's critical-path
    /// cost; those it answers instead leave there.
    fn delta_add(&self, p: &Problem, oi: usize, hits: &[(u32, bool)]) -> (f64, usize) {
        let o = &p.options[oi];
        let s = o.stage;
        let (cr, delay) = p.costs(o);
        let before: f64 = self.crit.iter().filter(|c| c.0 < s).map(|c| c.1).sum();
        let cap = p.base_total() + self.crit.iter().map(|c| c.1).sum::<f64>() + cr;
        let hit_lat = (self.cum[s] + before + cr + delay).min(cap);
        let mut dl = cr * self.alive_after[s] as f64;
        let mut wrong = self.wrong_total;
        for &(i, disagree) in hits {
            let i = i as usize;
            if self.exit_stage[i] < s {
                continue;
            }
            dl += hit_lat - self.lat[i] - cr;
            wrong = wrong - self.wrong[i] as usize + disagree as usize;
        }
        (dl, wrong)
    }
}
