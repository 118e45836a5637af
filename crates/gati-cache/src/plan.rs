//! The plan: which caches a deployment runs, written as `PLAN_DIR/plan.json` plus the chosen
//! caches' weights in `PLAN_DIR/caches.safetensors`.

use crate::candidates::Candidates;
use crate::decision::{self, Decision, DecisionKind};
use crate::heads::Variant;
use crate::planner::{Choice, HeadOption, Mode, Outcome, Problem};
use anyhow::{Context, Result};
use gati_core::files::write_json_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCache {
    pub layer: String,
    pub stage: usize,
    pub variant: Variant,
    /// Key prefix of this cache's tensors in `caches.safetensors`.
    pub key: String,
    pub params: i64,
    /// Measured batch-1 latency of the cache model.
    pub cost_ms: f64,
    pub decision: Decision,
    /// Fraction of all (held-out) calibration requests this cache answers, with the caches before it in place.
    pub expected_hit_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    pub hit_rate: f64,
    pub fidelity_loss: f64,
    pub latency_ms: f64,
    pub base_latency_ms: f64,
    pub speedup: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub weights: PathBuf,
    pub weights_sha256: String,
    pub mode: Mode,
    pub budget: f64,
    pub decision: DecisionKind,
    pub threads: i32,
    pub send_ms: f64,
    pub transfer_ms: f64,
    pub memory_budget_mb: Option<f64>,
    /// Calibration samples the planner scored on (the half not used to fit the decisions).
    pub calibration_samples: usize,
    pub caches: Vec<PlannedCache>,
    pub expected: Expected,
    /// Batch-1 latency of each base stage at `threads`, as planned with.
    pub stage_ms: Vec<f64>,
    pub planning_seconds: f64,
    /// The test split was cut to its first N images before halving (the evaluation half is the rest).
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// Where the trained candidates (all heads, outcomes) are kept, for re-planning and the oracle.
    #[serde(default)]
    pub candidates: Option<PathBuf>,
    /// The hit decisions were fitted on camera frames of the calibration images
    /// (`gati plan --calibrate-on-camera-frames`): the traffic this plan is for.
    #[serde(default)]
    pub calibrated_on_camera_frames: bool,
    /// Measured batch-1 cost of every candidate head, at `threads`.
    #[serde(default)]
    pub candidate_costs_ms: Vec<f64>,
    /// The chosen caches' weights, a file in the plan directory named by its content, so that
    /// replacing plan.json (one atomic rename) switches plan and weights together.
    #[serde(default = "legacy_caches_file")]
    pub caches_file: String,
}

fn legacy_caches_file() -> String {
    "caches.safetensors".into()
}

/// How to plan from a trained candidate set.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub mode: Mode,
    pub budget: f64,
    /// Plan for w + z·√w ≤ budget·n disagreements on calibration data (z = this; 1 by default).
    pub margin_sigmas: f64,
    pub decision: DecisionKind,
    pub send_ms: f64,
    pub transfer_ms: f64,
    pub memory_budget_mb: Option<f64>,
}

/// The planner's problem for a candidate set. The calibration half is cut again (per class): the
/// decision ladders are fitted on one part and the planner scores configurations on the other, so
/// that the thresholds' fit to their own data does not make the fidelity estimate optimistic.
pub fn problem(c: &Candidates, costs: &[f64], stage_ms: &[f64], req: &PlanRequest) -> (Problem, Vec<Vec<Decision>>) {
    let (fit_idx, score_idx) = crate::split::calibration_evaluation(&c.calibration.labels);
    let fit = c.calibration.subset(&fit_idx);
    let o = &c.calibration.subset(&score_idx);
    let mut options = Vec::new();
    let mut ladders = Vec::new();
    for (h, entry) in c.bank.heads.iter().enumerate() {
        let ladder = decision::ladder(req.decision, &fit, h);
        let settings = ladder
            .iter()
            .map(|d| {
                (0..o.len())
                    .map(|i| match d.hit(o.row(h, i)) {
                        None => Outcome::Miss,
                        Some((cls, _)) if cls as i64 == o.base_pred[i] => Outcome::Agree,
                        Some(_) => Outcome::Disagree,
                    })
                    .collect()
            })
            .collect();
        options.push(HeadOption {
            stage: entry.stage,
            cost_ms: costs[h],
            bytes: 4 * entry.params as u64,
            settings,
        });
        ladders.push(ladder);
    }
    let problem = Problem {
        samples: o.len(),
        stage_ms: stage_ms.to_vec(),
        options,
        mode: req.mode,
        send_ms: req.send_ms,
        transfer_ms: req.transfer_ms,
        budget: req.budget,
        margin_sigmas: req.margin_sigmas,
        memory_budget_bytes: req.memory_budget_mb.map(|m| (m * 1048576.0) as u64),
    };
    (problem, ladders)
}

/// Plans and returns the plan with the chosen caches' tensors (to be written beside it).
#[allow(clippy::too_many_arguments)]
pub fn make_plan(
    c: &Candidates,
    costs: &[f64],
    stage_ms: &[f64],
    req: &PlanRequest,
    weights: &Path,
    threads: i32,
) -> (Plan, Vec<(String, Tensor)>) {
    let t0 = std::time::Instant::now();
    let (problem, ladders) = problem(c, costs, stage_ms, req);
    let choices: Vec<Choice> = problem.solve();
    let planning_seconds = t0.elapsed().as_secs_f64();
    let ev = problem.evaluate(&choices);
    let vars = c.bank.vs.variables();
    let mut tensors = Vec::new();
    let caches: Vec<PlannedCache> = choices
        .iter()
        .zip(&ev.hit_rates)
        .map(|(ch, &hr)| {
            let e = &c.bank.heads[ch.option];
            for (name, t) in vars.iter().filter(|(k, _)| k.starts_with(&format!("{}.", e.key))) {
                tensors.push((name.clone(), t.shallow_clone()));
            }
            PlannedCache {
                layer: e.layer.clone(),
                stage: e.stage,
                variant: e.variant,
                key: e.key.clone(),
                params: e.params,
                cost_ms: costs[ch.option],
                decision: ladders[ch.option][ch.setting].clone(),
                expected_hit_rate: hr,
            }
        })
        .collect();
    let plan = Plan {
        model: c.meta.model.clone(),
        weights: weights.to_path_buf(),
        weights_sha256: c.meta.weights_sha256.clone(),
        mode: req.mode,
        budget: req.budget,
        decision: req.decision,
        threads,
        send_ms: req.send_ms,
        transfer_ms: req.transfer_ms,
        memory_budget_mb: req.memory_budget_mb,
        calibration_samples: problem.samples,
        expected: Expected {
            hit_rate: ev.hit_rates.iter().sum(),
            fidelity_loss: ev.fidelity_loss,
            latency_ms: ev.mean_latency_ms,
            base_latency_ms: ev.base_latency_ms,
            speedup: ev.base_latency_ms / ev.mean_latency_ms,
        },
        caches,
        stage_ms: stage_ms.to_vec(),
        planning_seconds,
        test_limit: None,
        candidates: None,
        calibrated_on_camera_frames: false,
        candidate_costs_ms: costs.to_vec(),
        caches_file: legacy_caches_file(),
    };
    (plan, tensors)
}

impl Plan {
    /// Writes the caches' weights under a new content-named file, then `plan.json` atomically
    /// (so a crash at any point leaves the previous plan and its weights in use), then removes
    /// weights files older than the previous plan's.
    pub fn save(&mut self, dir: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let previous = Plan::load(dir).ok().map(|p| p.caches_file);
        self.caches_file = gati_core::files::write_content_named(dir, "caches", tensors)?;
        write_json_atomic(self, &dir.join("plan.json"))?;
        gati_core::files::remove_stale(dir, "caches", &self.caches_file, previous.as_deref());
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("plan.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading plan {}", path.display()))?;
        let plan: Plan = serde_json::from_slice(&bytes).with_context(|| format!("parsing plan {}", path.display()))?;
        gati_core::files::file_in(dir, &plan.caches_file)
            .with_context(|| format!("plan {}: caches_file", path.display()))?;
        Ok(plan)
    }

    /// Where this plan's cache weights are, in plan folder `dir`.
    pub fn caches_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.caches_file)
    }
}
