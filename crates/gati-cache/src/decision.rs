//! Hit decisions: when may a cache answer? Two kinds, both calibrated on the calibration half.
//!
//! - `threshold`: per-class thresholds on the cache's max softmax probability.
//! - `selector`: the paper's logistic regression on the cache's log-probabilities predicting
//!   "agrees with the base model" (applied to the softmax once, without the paper's double softmax),
//!   with one threshold on its score.
//!
//! Each head gets a ladder of settings, one per target error rate in `ERROR_TARGETS`; the planner
//! picks one setting per chosen head so that the combined fidelity loss stays within budget.

use crate::outcomes::{top1, Outcomes};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Target error rates (disagreement with the base model among a head's hits) of the 20 settings.
pub const ERROR_TARGETS: [f64; 20] = [
    0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25,
];

/// Threshold that never fires (probabilities and scores are at most 1).
pub(crate) const NEVER: f32 = 2.0;

/// A learned version's threshold for a class it has not seen enough of to certify: that class is
/// left to the plan's own cache (its head and threshold), as if the version had not been learned.
pub const PLAN_DECIDES: f32 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionKind {
    Threshold,
    Selector,
}

impl gati_core::names::Named for DecisionKind {
    fn what() -> &'static str {
        "decision"
    }
}

/// What a budget limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetKind {
    /// Answers that differ from the base model's: what a production system can measure.
    #[default]
    Fidelity,
    /// Top-1 lost against ground-truth labels (labelled data): a hit costs only where the base
    /// model is right and the cache is not.
    Accuracy,
}

impl gati_core::names::Named for BudgetKind {
    fn what() -> &'static str {
        "budget kind"
    }
}

impl BudgetKind {
    /// Does answering `class` for sample `i` of `o` count against this budget?
    pub fn costly(self, o: &Outcomes, i: usize, class: usize) -> bool {
        let c = class as i64;
        match self {
            BudgetKind::Fidelity => c != o.base_pred[i],
            BudgetKind::Accuracy => c != o.labels[i] && o.base_pred[i] == o.labels[i],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decision {
    Threshold {
        thresholds: Vec<f32>,
    },
    Selector {
        weights: Vec<f32>,
        bias: f32,
        threshold: f32,
    },
}

impl Decision {
    /// `Some((class, probability))` if the cache may answer with this softmax row.
    pub fn hit(&self, row: &[f32]) -> Option<(usize, f32)> {
        let (c, p) = top1(row);
        let fires = match self {
            Decision::Threshold { thresholds } => p >= thresholds[c],
            Decision::Selector {
                weights,
                bias,
                threshold,
            } => selector_score(weights, *bias, row) >= *threshold,
        };
        fires.then_some((c, p))
    }

    /// Class `c` is left to the plan's cache.
    pub fn plan_decides(&self, c: usize) -> bool {
        matches!(self, Decision::Threshold { thresholds } if thresholds[c] == PLAN_DECIDES)
    }

    /// Some class is left to the plan's cache.
    pub fn delegates(&self) -> bool {
        matches!(self, Decision::Threshold { thresholds } if thresholds.contains(&PLAN_DECIDES))
    }
}

/// What a cache with decision `d` answers for softmax row `row`, where the plan's own cache has
/// decision `plan_decision` and softmax row `plan_row()` on the same activation. The plan itself
/// (`d == plan_decision`) answers as usual. A learned version answers a class only if the plan's
/// cache ranks it first too: a head sharpened on recent classes is confidently wrong on classes it
/// has not seen lately, where the plan's head still tells them apart. On a class it leaves to the
/// plan, the plan answers (with its own row, returned when it did).
pub fn decide(
    d: &Decision,
    row: &[f32],
    plan_decision: &Decision,
    plan_row: impl FnOnce() -> Vec<f32>,
) -> (Option<Vec<f32>>, Option<(usize, f32)>) {
    if d == plan_decision {
        return (None, d.hit(row));
    }
    let prow = plan_row();
    let plan_top = top1(&prow).0;
    if let Some(hit) = d.hit(row).filter(|&(c, _)| c == plan_top) {
        return (None, Some(hit));
    }
    match plan_decision.hit(&prow) {
        Some((c, p)) if d.plan_decides(c) => (Some(prow), Some((c, p))),
        _ => (None, None),
    }
}

fn features(row: &[f32]) -> impl Iterator<Item = f32> + '_ {
    row.iter().map(|&p| p.max(1e-12).ln())
}

fn selector_score(w: &[f32], b: f32, row: &[f32]) -> f32 {
    let z: f32 = features(row).zip(w).map(|(f, w)| f * w).sum::<f32>() + b;
    1.0 / (1.0 + (-z).exp())
}

/// Largest prefix of `(score, wrong)` (sorted by score, descending) whose error rate is at most
/// `target`; returns the score halfway between its last sample and the next one (so that a
/// calibration sample served again is not decided by rounding: a batch computes its scores with
/// other rounding than a single request), or `NEVER` if even the first sample is wrong.
pub(crate) fn threshold_for(sorted: &[(f32, bool)], target: f64) -> f32 {
    let mut wrong = 0usize;
    let mut best = None;
    for (k, &(_, w)) in sorted.iter().enumerate() {
        wrong += w as usize;
        if wrong as f64 <= target * (k + 1) as f64 {
            best = Some(k);
        }
    }
    match best {
        None => NEVER,
        Some(k) => match sorted.get(k + 1) {
            Some(&(next, _)) => sorted[k].0 - (sorted[k].0 - next) / 2.0,
            None => sorted[k].0,
        },
    }
}

/// The ladder of per-class threshold settings of head `h`.
pub fn threshold_ladder(o: &Outcomes, h: usize, budget: BudgetKind) -> Vec<Decision> {
    let mut per_class: Vec<Vec<(f32, bool)>> = vec![Vec::new(); o.classes];
    for i in 0..o.len() {
        let (c, p) = o.top(h, i);
        per_class[c].push((p, budget.costly(o, i, c)));
    }
    for v in &mut per_class {
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    ERROR_TARGETS
        .iter()
        .map(|&e| Decision::Threshold {
            thresholds: per_class.iter().map(|v| threshold_for(v, e)).collect(),
        })
        .collect()
}

/// Fits the selector of head `h` (ridge-regularised logistic regression, Newton's method).
pub fn fit_selector(o: &Outcomes, h: usize) -> (Vec<f32>, f32) {
    let n = o.len() as i64;
    let k = o.classes as i64;
    let mut x = Vec::with_capacity((n * (k + 1)) as usize);
    let mut y = Vec::with_capacity(n as usize);
    for i in 0..o.len() {
        x.extend(features(o.row(h, i)).map(f64::from));
        x.push(1.0);
        y.push((o.top(h, i).0 as i64 == o.base_pred[i]) as i64 as f64);
    }
    let x = Tensor::from_slice(&x).view([n, k + 1]);
    let y = Tensor::from_slice(&y);
    let ridge = Tensor::eye(k + 1, (Kind::Double, tch::Device::Cpu)) * 1e-3;
    let mut w = Tensor::zeros([k + 1], (Kind::Double, tch::Device::Cpu));
    for _ in 0..30 {
        let p = x.mv(&w).sigmoid();
        let s: Tensor = &p * (-&p + 1.0);
        let hess = x.tr().matmul(&(&x * s.unsqueeze(1))) + &ridge;
        let grad = x.tr().mv(&(&p - &y)) + ridge.mv(&w);
        let step = Tensor::linalg_solve(&hess, &grad.unsqueeze(1), true).squeeze_dim(1);
        w -= &step;
        if step.abs().max().double_value(&[]) < 1e-8 {
            break;
        }
    }
    let w: Vec<f64> = Vec::try_from(w).expect("1-d");
    (
        w[..k as usize].iter().map(|&v| v as f32).collect(),
        w[k as usize] as f32,
    )
}

/// The ladder of selector settings of head `h`: one fitted selector, one threshold per target.
pub fn selector_ladder(o: &Outcomes, h: usize, budget: BudgetKind) -> Vec<Decision> {
    let (weights, bias) = fit_selector(o, h);
    let mut scored: Vec<(f32, bool)> = (0..o.len())
        .map(|i| {
            (
                selector_score(&weights, bias, o.row(h, i)),
                budget.costly(o, i, o.top(h, i).0),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    ERROR_TARGETS
        .iter()
        .map(|&e| Decision::Selector {
            weights: weights.clone(),
            bias,
            threshold: threshold_for(&scored, e),
        })
        .collect()
}

pub fn ladder(kind: DecisionKind, budget: BudgetKind, o: &Outcomes, h: usize) -> Vec<Decision> {
    match kind {
        DecisionKind::Threshold => threshold_ladder(o, h, budget),
        DecisionKind::Selector => selector_ladder(o, h, budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_takes_the_longest_prefix_within_target() {
        let s = [
            (0.99, false),
            (0.95, false),
            (0.9, true),
            (0.8, false),
            (0.7, false),
            (0.6, true),
            (0.5, true),
        ];
        // Halfway to the first sample left out.
        assert!((threshold_for(&s, 0.0) - 0.925).abs() < 1e-6);
        assert!((threshold_for(&s, 0.2) - 0.65).abs() < 1e-6); // 1 wrong in 5
        assert!((threshold_for(&s, 0.34) - 0.55).abs() < 1e-6); // 2 in 6
        assert_eq!(threshold_for(&s[..2], 0.0), 0.95); // every sample in
        assert_eq!(threshold_for(&[(0.9, true)], 0.0), NEVER);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn an_accuracy_budget_counts_only_answers_the_base_had_right() {
        // Sample 0: base right (label 1); sample 1: base wrong (label 2, base 1).
        let o = Outcomes {
            labels: vec![1, 2],
            base_pred: vec![1, 1],
            classes: 3,
            probs: vec![vec![0.0; 6]],
        };
        let (f, a) = (BudgetKind::Fidelity, BudgetKind::Accuracy);
        assert!(!f.costly(&o, 0, 1) && !a.costly(&o, 0, 1));
        assert!(f.costly(&o, 0, 0) && a.costly(&o, 0, 0));
        // Differing from a wrong base answer costs fidelity, never accuracy.
        assert!(f.costly(&o, 1, 0) && !a.costly(&o, 1, 0));
        assert!(f.costly(&o, 1, 2) && !a.costly(&o, 1, 2));
    }
}
