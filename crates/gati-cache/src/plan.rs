//! The plan: which caches a deployment runs, written as `PLAN_DIR/plan.json` plus the chosen
//! caches' weights in `PLAN_DIR/caches.safetensors`.

pub use crate::beside::BesideCosts;
use crate::candidates::Candidates;
use crate::decision::{self, BudgetKind, Decision, DecisionKind};
use crate::heads::Variant;
use crate::outcomes::Outcomes;
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
    /// It runs on its own thread beside the base model (`PlanRequest::students_beside`); `cost_ms`
    /// is then its latency there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beside: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    pub hit_rate: f64,
    pub fidelity_loss: f64,
    /// Top-1 lost against the labels (net of hits that fix the base model's mistakes).
    #[serde(default)]
    pub accuracy_loss: Option<f64>,
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
    /// What `budget` limits.
    #[serde(default)]
    pub budget_kind: BudgetKind,
    pub decision: DecisionKind,
    /// Rounds of survivor-aware re-fitting the planner could run (`PlanRequest::survivor_rounds`).
    #[serde(default)]
    pub survivor_rounds: usize,
    /// `PlanRequest::calibration_limit` as planned.
    #[serde(default)]
    pub calibration_limit: Option<usize>,
    /// `PlanRequest::variants` as planned (None: every trained variant).
    #[serde(default)]
    pub planned_variants: Option<Vec<Variant>>,
    pub threads: i32,
    pub send_ms: f64,
    pub transfer_ms: f64,
    /// `PlanRequest::students_beside` as planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub students_beside: Option<BesideCosts>,
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
    /// A memory cache for traffic with locality (`gati plan-memory`), planned on a request stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PlannedMemory>,
}

/// The memory cache a plan serves, and what it was planned for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedMemory {
    #[serde(flatten)]
    pub spec: crate::memory::MemorySpec,
    /// The calibration stream it was planned on (the traffic this plan is for).
    pub stream: String,
    /// Requests of that stream it was calibrated on.
    pub stream_requests: usize,
    /// Measured lookup cost at a full store, batch 1.
    pub cost_ms: f64,
    /// Expected figures over the calibration stream, learned caches included.
    pub expected: Expected,
    /// The learned caches' expected speed-up over the same stream without the memory cache.
    pub expected_without_memory: f64,
    /// Each request that repeats an earlier one exits at the memory layer; the rest run the base model.
    pub locality_oracle_speedup: f64,
}

fn legacy_caches_file() -> String {
    "caches.safetensors".into()
}

/// How to plan from a trained candidate set.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub mode: Mode,
    pub budget: f64,
    /// Plan for w + z·√w ≤ budget·n disagreements on calibration data (z = this;
    /// `DEFAULT_MARGIN_SIGMAS` by default).
    pub margin_sigmas: f64,
    pub decision: DecisionKind,
    pub send_ms: f64,
    pub transfer_ms: f64,
    pub memory_budget_mb: Option<f64>,
    pub budget_kind: BudgetKind,
    /// Survivor-aware calibration: after planning, re-fit each chosen cache's decision ladder on
    /// the samples that reach it (the earlier caches' misses), add those settings, and plan again;
    /// at most this many rounds, stopping when a round does not lower the expected latency.
    pub survivor_rounds: usize,
    /// Calibrate on the first N calibration samples only (ablation: the test split's half
    /// without the held-out training images, which come after it).
    pub calibration_limit: Option<usize>,
    /// Plan with these variants only (ablation); None: every trained variant.
    pub variants: Option<Vec<Variant>>,
    /// Inline mode: each `student` cache may also run on a second thread beside the base model,
    /// at these measured costs; the planner takes whichever placement is faster.
    pub students_beside: Option<BesideCosts>,
}

/// The planner's default margin z. 1 overshot the budget on unseen images; 2 held it in 7 of 8
/// plans of one run and 6 of 8 (with students) of another; 2.5 held it in all 8 of that second
/// run at the same measured speed-ups (docs/results.md, "Reading the benchmark").
pub const DEFAULT_MARGIN_SIGMAS: f64 = 2.5;

impl Default for PlanRequest {
    fn default() -> Self {
        Self {
            mode: Mode::Inline,
            budget: 0.01,
            margin_sigmas: DEFAULT_MARGIN_SIGMAS,
            decision: DecisionKind::Threshold,
            send_ms: 0.05,
            transfer_ms: 0.3,
            memory_budget_mb: None,
            budget_kind: BudgetKind::Fidelity,
            survivor_rounds: 0,
            calibration_limit: None,
            variants: None,
            students_beside: None,
        }
    }
}

impl PlanRequest {
    /// The request `plan` was made with, at another budget.
    pub fn like(plan: &Plan, budget: f64) -> Self {
        Self {
            mode: plan.mode,
            budget,
            decision: plan.decision,
            send_ms: plan.send_ms,
            transfer_ms: plan.transfer_ms,
            memory_budget_mb: plan.memory_budget_mb,
            budget_kind: plan.budget_kind,
            survivor_rounds: plan.survivor_rounds,
            calibration_limit: plan.calibration_limit,
            variants: plan.planned_variants.clone(),
            students_beside: plan.students_beside,
            ..Self::default()
        }
    }
}

/// The calibration samples the plan uses (`calibration_limit` of them), and the same cut again per
/// class into two parts.
pub fn calibration_parts(c: &Candidates, req: &PlanRequest) -> (Outcomes, [Outcomes; 2]) {
    let n = req.calibration_limit.unwrap_or(usize::MAX).min(c.calibration.len());
    let all = c.calibration.subset(&(0..n).collect::<Vec<_>>());
    let (first, second) = crate::split::calibration_evaluation(&all.labels);
    let parts = [all.subset(&first), all.subset(&second)];
    (all, parts)
}

/// One decision setting of a head, fitted three times: on each calibration part (and scored on
/// the other one, so that every calibration sample scores the setting out of sample: a threshold
/// fitted to its own samples looks better there than it is) and on all of them (what the plan
/// deploys, so its thresholds rest on every sample).
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    parts: [Decision; 2],
    all: Decision,
}

impl Fitted {
    /// What judges calibration part `s` out of sample: the decision fitted on the other part.
    fn judging(&self, s: usize) -> &Decision {
        &self.parts[1 - s]
    }
}

/// Outcome of every sample of `o` under decision `d` of head `h`.
fn score(d: &Decision, o: &Outcomes, h: usize, kind: BudgetKind) -> Vec<Outcome> {
    (0..o.len())
        .map(|i| match d.hit(o.row(h, i)) {
            None => Outcome::Miss,
            Some((cls, _)) if kind.costly(o, i, cls) => Outcome::Disagree,
            Some(_) => Outcome::Agree,
        })
        .collect()
}

/// A setting's outcomes on every calibration sample, cross-fitted: the second part under the
/// decision fitted on the first, then the first under the one fitted on the second.
fn cross_score(f: &Fitted, parts: &[Outcomes; 2], h: usize, kind: BudgetKind) -> Vec<Outcome> {
    [1, 0]
        .into_iter()
        .flat_map(|s| score(f.judging(s), &parts[s], h, kind))
        .collect()
}

/// Head `h`'s decision ladder fitted on each part and on all of them (`on`: part 0, part 1, all).
fn fitted_ladder(req: &PlanRequest, h: usize, on: [&Outcomes; 3]) -> Vec<Fitted> {
    let [a, b, all] = on.map(|o| decision::ladder(req.decision, req.budget_kind, o, h));
    a.into_iter()
        .zip(b)
        .zip(all)
        .map(|((a, b), all)| Fitted { parts: [a, b], all })
        .collect()
}

/// The planner's problem for a candidate set: every head with its decision ladder, each setting
/// scored cross-fitted on every calibration sample (the parts from `calibration_parts`). Option
/// `h` is head `h`; with `students_beside`, each student head has a second option after them,
/// the same head run beside the base model. Returns the head of each option too.
pub fn problem(
    c: &Candidates,
    (all, parts): (&Outcomes, &[Outcomes; 2]),
    costs: &[f64],
    stage_ms: &[f64],
    req: &PlanRequest,
) -> (Problem, Vec<Vec<Fitted>>, Vec<usize>) {
    let mut options = Vec::new();
    let mut ladders = Vec::new();
    for (h, entry) in c.bank.heads.iter().enumerate() {
        let excluded = req.variants.as_ref().is_some_and(|v| !v.contains(&entry.variant));
        // An excluded variant keeps its place (option = head index) but has no setting to pick.
        let ladder = if excluded {
            Vec::new()
        } else {
            fitted_ladder(req, h, [&parts[0], &parts[1], all])
        };
        let settings = ladder
            .iter()
            .map(|f| cross_score(f, parts, h, req.budget_kind))
            .collect();
        options.push(HeadOption {
            stage: entry.stage,
            cost_ms: costs[h],
            bytes: 4 * entry.params as u64,
            beside: false,
            settings,
        });
        ladders.push(ladder);
    }
    let mut heads: Vec<usize> = (0..options.len()).collect();
    let beside = req.students_beside.filter(|_| req.mode == Mode::Inline);
    for (h, entry) in c.bank.heads.iter().enumerate() {
        if let (Some(b), Variant::Student) = (beside, entry.variant) {
            options.push(HeadOption {
                cost_ms: b.latency_ms,
                beside: true,
                ..options[h].clone()
            });
            ladders.push(ladders[h].clone());
            heads.push(h);
        }
    }
    let problem = Problem {
        samples: parts[0].len() + parts[1].len(),
        stage_ms: stage_ms.to_vec(),
        options,
        mode: req.mode,
        send_ms: req.send_ms,
        transfer_ms: req.transfer_ms,
        beside_slowdown_ms: beside.map_or(0.0, |b| b.slowdown_ms),
        budget: req.budget,
        margin_sigmas: req.margin_sigmas,
        memory_budget_bytes: req.memory_budget_mb.map(|m| (m * 1048576.0) as u64),
    };
    (problem, ladders, heads)
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
    let (all, parts) = calibration_parts(c, req);
    let (mut problem, mut ladders, heads) = problem(c, (&all, &parts), costs, stage_ms, req);
    let mut choices: Vec<Choice> = problem.solve();
    let mut rounds = 0;
    while rounds < req.survivor_rounds && !choices.is_empty() {
        rounds += 1;
        let before = problem.evaluate(&choices).mean_latency_ms;
        add_survivor_ladders(&mut problem, &mut ladders, &heads, &choices, (&all, &parts), req);
        let next = problem.solve();
        if problem.evaluate(&next).mean_latency_ms >= before - 1e-9 {
            break;
        }
        choices = next;
    }
    if req.survivor_rounds > 0 {
        eprintln!("survivor-aware calibration: {rounds} round(s)");
    }
    let planning_seconds = t0.elapsed().as_secs_f64();
    let ev = problem.evaluate(&choices);
    let chosen: Vec<(usize, &Fitted)> = choices
        .iter()
        .map(|ch| (heads[ch.option], &ladders[ch.option][ch.setting]))
        .collect();
    let (fidelity_loss, accuracy_loss) = cross_cascade_losses(&parts, &chosen);
    let vars = c.bank.vs.variables();
    let mut tensors = Vec::new();
    let caches: Vec<PlannedCache> = choices
        .iter()
        .zip(&ev.hit_rates)
        .map(|(ch, &hr)| {
            let e = &c.bank.heads[heads[ch.option]];
            for (name, t) in vars.iter().filter(|(k, _)| k.starts_with(&format!("{}.", e.key))) {
                tensors.push((name.clone(), t.shallow_clone()));
            }
            PlannedCache {
                layer: e.layer.clone(),
                stage: e.stage,
                variant: e.variant,
                key: e.key.clone(),
                params: e.params,
                cost_ms: problem.options[ch.option].cost_ms,
                decision: ladders[ch.option][ch.setting].all.clone(),
                expected_hit_rate: hr,
                beside: problem.options[ch.option].beside,
            }
        })
        .collect();
    let plan = Plan {
        model: c.meta.model.clone(),
        // Absolute: plan.json is read from other working directories (a relative path in it is
        // taken relative to the plan directory).
        weights: std::path::absolute(weights).unwrap_or_else(|_| weights.to_path_buf()),
        weights_sha256: c.meta.weights_sha256.clone(),
        mode: req.mode,
        budget: req.budget,
        budget_kind: req.budget_kind,
        decision: req.decision,
        survivor_rounds: req.survivor_rounds,
        calibration_limit: req.calibration_limit,
        planned_variants: req.variants.clone(),
        threads,
        send_ms: req.send_ms,
        transfer_ms: req.transfer_ms,
        students_beside: req.students_beside,
        memory_budget_mb: req.memory_budget_mb,
        calibration_samples: problem.samples,
        expected: Expected {
            hit_rate: ev.hit_rates.iter().sum(),
            fidelity_loss,
            accuracy_loss: Some(accuracy_loss),
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
        memory: None,
    };
    (plan, tensors)
}

/// Survivor-aware ladders: each chosen cache's ladder re-fitted on the samples that reach it
/// (missed by every chosen cache before it; in each part under the decisions fitted there), added
/// to its head's options as further settings. The planner scores them cross-fitted like every
/// other setting, so they are used only where they lower the expected latency within budget.
fn add_survivor_ladders(
    problem: &mut Problem,
    ladders: &mut [Vec<Fitted>],
    heads: &[usize],
    choices: &[Choice],
    (all, parts): (&Outcomes, &[Outcomes; 2]),
    req: &PlanRequest,
) {
    let every = |o: &Outcomes| (0..o.len()).collect::<Vec<_>>();
    let mut alive_all = every(all);
    let mut alive = [every(&parts[0]), every(&parts[1])];
    for ch in choices {
        let (o, h) = (ch.option, heads[ch.option]);
        if alive.iter().any(|a| a.len() < 2 * all.classes) {
            break;
        }
        let survivors = [
            parts[0].subset(&alive[0]),
            parts[1].subset(&alive[1]),
            all.subset(&alive_all),
        ];
        for f in fitted_ladder(req, h, [&survivors[0], &survivors[1], &survivors[2]]) {
            if !ladders[o].contains(&f) {
                problem.options[o]
                    .settings
                    .push(cross_score(&f, parts, h, req.budget_kind));
                ladders[o].push(f);
            }
        }
        let f = &ladders[o][ch.setting];
        alive_all.retain(|&i| f.all.hit(all.row(h, i)).is_none());
        for (s, a) in alive.iter_mut().enumerate() {
            a.retain(|&i| f.parts[s].hit(parts[s].row(h, i)).is_none());
        }
    }
}

/// (fidelity loss, accuracy loss) of running `chosen` caches (head index, setting; in stage order)
/// over both calibration parts, each under the decisions fitted on the other: the first hit
/// answers, else the base model.
fn cross_cascade_losses(parts: &[Outcomes; 2], chosen: &[(usize, &Fitted)]) -> (f64, f64) {
    let (mut differ, mut lost) = (0, 0);
    for (s, part) in parts.iter().enumerate() {
        let judging: Vec<(usize, &Decision)> = chosen.iter().map(|(h, f)| (*h, f.judging(s))).collect();
        let (d, l) = cascade_counts(part, &judging);
        differ += d;
        lost += l;
    }
    let n = (parts[0].len() + parts[1].len()).max(1) as f64;
    (differ as f64 / n, lost as f64 / n)
}

/// (answers that differ from the base model's, top-1 lost net) of `chosen` over `o`.
fn cascade_counts(o: &Outcomes, chosen: &[(usize, &Decision)]) -> (i64, i64) {
    let (mut differ, mut lost) = (0i64, 0i64);
    for i in 0..o.len() {
        let answer = chosen
            .iter()
            .find_map(|(h, d)| d.hit(o.row(*h, i)))
            .map_or(o.base_pred[i], |(c, _)| c as i64);
        differ += (answer != o.base_pred[i]) as i64;
        lost += (o.base_pred[i] == o.labels[i]) as i64 - (answer == o.labels[i]) as i64;
    }
    (differ, lost)
}

impl Plan {
    /// Each cache's cost (ms), as the planner counts it (`Problem::costs`): on the base model's
    /// path, paid by every request that reaches it, and from the end of its stage to its answer
    /// on a hit. Inline, both are its own time; beside, the base model's slowdown
    /// (`BesideCosts::slowdown_ms`) and its latency there (`cost_ms`).
    pub fn cache_costs_ms(&self) -> Vec<(f64, f64)> {
        self.caches
            .iter()
            .map(|c| match self.students_beside.filter(|_| c.beside) {
                Some(b) => (b.slowdown_ms, c.cost_ms),
                None => (c.cost_ms, c.cost_ms),
            })
            .collect()
    }

    /// Writes the caches' weights under a new content-named file, then `plan.json` atomically
    /// (so a crash at any point leaves the previous plan and its weights in use), then removes
    /// weights files older than the previous plan's.
    pub fn save(&mut self, dir: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let previous = Plan::load(dir).ok().map(|p| p.caches_file);
        self.caches_file = gati_core::files::write_content_named(dir, "caches", tensors)?;
        write_json_atomic(&self.relative_to(dir), &dir.join("plan.json"))?;
        gati_core::files::remove_stale(dir, "caches", &self.caches_file, previous.as_deref());
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("plan.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading plan {}", path.display()))?;
        let mut plan: Plan =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing plan {}", path.display()))?;
        gati_core::files::file_in(dir, &plan.caches_file)
            .with_context(|| format!("plan {}: caches_file", path.display()))?;
        // Files named relative to the plan directory (a self-contained plan moves as one folder).
        if plan.weights.is_relative() {
            plan.weights = dir.join(&plan.weights);
        }
        if let Some(c) = plan.candidates.as_mut().filter(|c| c.is_relative()) {
            *c = dir.join(&*c);
        }
        Ok(plan)
    }

    /// As written to `dir/plan.json`: files inside `dir` named relative to it.
    fn relative_to(&self, dir: &Path) -> Plan {
        let mut p = self.clone();
        let inside = |f: &Path| {
            let dir = std::path::absolute(dir).ok()?;
            std::path::absolute(f)
                .ok()?
                .strip_prefix(&dir)
                .ok()
                .map(Path::to_path_buf)
        };
        if let Some(w) = inside(&p.weights) {
            p.weights = w;
        }
        if let Some(c) = p.candidates.as_deref().and_then(inside) {
            p.candidates = Some(c);
        }
        p
    }

    /// Copies what serving this plan needs into `out`, a new folder that can be moved or copied
    /// to another machine as one: plan.json, the caches' weights and the base model's weights
    /// (checked against the plan's sha256), named relative to it. The training candidates stay
    /// behind.
    pub fn export(&self, dir: &Path, out: &Path) -> Result<()> {
        if out.exists() && std::fs::read_dir(out)?.next().is_some() {
            anyhow::bail!("export: {} exists and is not empty", out.display());
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let ext = self
            .weights
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("safetensors");
        let base = format!("base.{ext}");
        let sha = gati_core::weights::sha256_file(&self.weights)
            .with_context(|| format!("reading base weights {}", self.weights.display()))?;
        if sha != self.weights_sha256 {
            anyhow::bail!(
                "export: base weights {} have sha256 {sha}, the plan was made with {}",
                self.weights.display(),
                self.weights_sha256
            );
        }
        for (from, to) in [
            (self.weights.clone(), base.as_str()),
            (self.caches_path(dir), self.caches_file.as_str()),
        ] {
            std::fs::copy(&from, out.join(to))
                .with_context(|| format!("copying {} to {}", from.display(), out.display()))?;
        }
        let mut p = self.clone();
        p.weights = PathBuf::from(base);
        p.candidates = None;
        write_json_atomic(&p, &out.join("plan.json"))
    }

    /// Where this plan's cache weights are, in plan folder `dir`.
    pub fn caches_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.caches_file)
    }

    /// The layers a cache consults, learned or memory, each once, in stage order: what a
    /// distributed deployment streams to its cache workers.
    pub fn cache_layers(&self) -> Vec<(usize, String)> {
        let mut l: Vec<(usize, String)> = self.caches.iter().map(|c| (c.stage, c.layer.clone())).collect();
        l.extend(self.memory.iter().map(|m| (m.spec.stage, m.spec.layer.clone())));
        l.sort();
        l.dedup();
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A student beside costs the base model's path only its slowdown, and answers after its
    /// latency there; an inline head costs its own time on both counts.
    #[test]
    fn a_cache_beside_costs_the_path_its_slowdown_and_a_hit_its_latency() {
        let cache = |layer: &str, stage: usize, cost_ms: f64, beside: bool| {
            serde_json::json!({
                "layer": layer, "stage": stage, "variant": "gap", "key": layer, "params": 10,
                "cost_ms": cost_ms, "decision": {"kind": "threshold", "thresholds": [0.9, 0.9]},
                "expected_hit_rate": 0.5, "beside": beside
            })
        };
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "model": "m", "weights": "w", "weights_sha256": "s", "mode": "inline", "budget": 0.01,
            "decision": "threshold", "threads": 1, "send_ms": 0.05, "transfer_ms": 0.3,
            "students_beside": {"latency_ms": 1.7, "slowdown_ms": 0.07},
            "memory_budget_mb": null, "calibration_samples": 100,
            "caches": [cache("stem", 0, 1.7, true), cache("layer1.2", 3, 0.01, false)],
            "expected": {"hit_rate": 0.5, "fidelity_loss": 0.01, "latency_ms": 2.0,
                         "base_latency_ms": 4.0, "speedup": 2.0},
            "stage_ms": [0.03, 0.2, 0.2, 0.2], "planning_seconds": 1.0
        }))
        .unwrap();
        assert_eq!(plan.cache_costs_ms(), vec![(0.07, 1.7), (0.01, 0.01)]);
        let inline = Plan {
            students_beside: None,
            ..plan
        };
        assert_eq!(
            inline.cache_costs_ms()[0],
            (1.7, 1.7),
            "without beside costs the student runs inline"
        );
    }
}
