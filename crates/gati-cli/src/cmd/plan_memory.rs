use super::data_args::load_split;
use anyhow::{bail, Context, Result};
use gati_cache::candidates::Candidates;
use gati_cache::memory::MemoryIndex;
use gati_cache::memory_plan::{self, Scored};
use gati_cache::plan::{make_plan, Expected, Plan, PlanRequest, PlannedMemory};
use gati_cache::runtime::EarlyExit;
use gati_cache::split;
use gati_core::workload::{stream_dataset, Stream};
use gati_core::BaseModel;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory written by `gati plan` (its learned caches are scored with the memory cache)
    #[arg(long)]
    plan: PathBuf,
    /// The traffic to plan for: a stream over the calibration half (iid, zipf[:s],
    /// working-set[:k[:every]], bursty-repeat[:r[:window]], door-camera[:people[:burst]],
    /// frames[:burst[:window]])
    #[arg(long)]
    stream: String,
    /// Requests of the calibration stream
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fidelity budget over the stream (default: the plan's)
    #[arg(long)]
    budget: Option<f64>,
    /// Plan for fidelity loss + z standard errors ≤ budget over the stream (z = this; errors
    /// counted by item, so an item answered wrongly on all its repeats weighs as one burst)
    #[arg(long, default_value_t = 1.0)]
    margin_sigmas: f64,
    /// Bytes the memory store may hold, in MiB (2 MiB is about 2,000 CIFAR keys at the stem, an exact
    /// lookup 0.1 ms here; beyond 8,192 keys the store is searched through an index)
    #[arg(long, default_value_t = 2.0)]
    memory_cache_mb: f64,
    /// How the store is searched: auto (exact up to 8,192 entries, else the inverted-file index),
    /// exact, or ivf
    #[arg(long, value_enum, default_value_t = MemoryIndex::Auto)]
    memory_index: MemoryIndex,
    /// Candidate layers (comma list of stage names; default: the stem and the first blocks)
    #[arg(long)]
    layers: Option<String>,
    /// Dataset folder (default: as for `gati plan`)
    #[arg(long, env = "GATI_DATA")]
    data: Option<PathBuf>,
    /// Also re-plan the learned caches from the plan's candidates at these fractions of the budget
    /// (comma list, e.g. 0.25,0.5,0.75) and keep the combination that is fastest within budget:
    /// fewer, surer learned hits leave more of the budget to the memory cache
    #[arg(long, default_value = "")]
    learned_budgets: String,
    /// Write the plan here (default: replace PLAN's plan.json; the cache weights are shared)
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    plan: PathBuf,
    stream: String,
    requests: usize,
    budget: f64,
    chosen: Scored,
    learned_only: Scored,
    locality_oracle_speedup: f64,
    /// Median lookup time at a full store, per candidate layer.
    lookup_ms: Vec<(String, f64)>,
    /// The lookup time's distribution at a full store (500 lookups), per candidate layer.
    lookup_latency_ms: Vec<(String, gati_core::stats::LatencyStats)>,
    /// Entries a full store holds at the chosen layer.
    capacity: usize,
    /// The fastest setting of each layer within budget (with the chosen learned caches).
    per_layer: Vec<Scored>,
    base_stability: BaseStability,
    /// The budget the chosen learned caches were planned for.
    learned_budget: f64,
    /// Each learned plan tried: its budget, the learned caches alone, the best with memory.
    learned_tried: Vec<(f64, Scored, Scored)>,
}

/// The base model's own answers on repeats of an image in the stream.
#[derive(Serialize)]
struct BaseStability {
    /// Share of requests that repeat an earlier image.
    repeats: f64,
    /// Share of repeats answered differently from that image's previous request.
    changed: f64,
    /// Share of repeats whose previous answer had confidence ≥ 0.99, and the share of those changed.
    sure_previous: f64,
    sure_changed: f64,
}

pub fn run(a: Args) -> Result<()> {
    let stream = Stream::parse(&a.stream)?;
    let original = Plan::load(&a.plan)?;
    gati_core::set_threads(original.threads.max(1) as usize);
    let budget = a.budget.unwrap_or(original.budget);
    let model = BaseModel::load(&original.model, &original.weights, tch::Device::Cpu)?;
    let stages = candidate_stages(&model, a.layers.as_deref())?;
    let max_bytes = (a.memory_cache_mb * 1048576.0) as u64;
    let lookup_stats: Vec<gati_core::stats::LatencyStats> = stages
        .iter()
        .map(|&k| memory_plan::lookup_cost_ms(&model, k, max_bytes, a.memory_index))
        .collect::<Result<_>>()?;
    let lookup_ms: Vec<f64> = lookup_stats.iter().map(|l| l.p50).collect();
    let dir = gati_core::paths::data_dir_for(&original.model, a.data.as_deref())?;
    let test = load_split(&model, &dir, "test", original.test_limit)?;
    let (ci, _) = split::calibration_evaluation(&test.labels);
    let cal = test.subset(&ci);
    let reqs = stream.generate(&cal.labels, a.requests, a.seed);
    let frames = stream_dataset(&cal, &reqs);
    let items: Vec<usize> = reqs.iter().map(|r| r.index).collect();
    let classes = model.spec().num_classes;
    let base_ms: f64 = original.stage_ms.iter().sum();
    let n = reqs.len();

    // The learned caches to combine with: the plan's own, and the plan re-made at lower budgets.
    let scratch = tempfile::tempdir()?;
    let mut learned = vec![Learned {
        budget: original.budget,
        plan: Plan {
            memory: None,
            ..original.clone()
        },
        tensors: None,
        caches: original.caches_path(&a.plan),
    }];
    for (i, f) in parse_fractions(&a.learned_budgets)?.into_iter().enumerate() {
        match remake(&original, &model, budget * f, &scratch.path().join(i.to_string()))? {
            Some(l) => learned.push(l),
            None => break,
        }
    }
    let capacity_of = |lk: &memory_plan::LayerKeys| {
        gati_cache::memory::capacity(max_bytes, lk.keys.size()[1], classes, a.memory_index).0
    };
    let mut tried = Vec::new();
    for l in &learned {
        let base = BaseModel::load(&original.model, &original.weights, tch::Device::Cpu)?;
        let ee = EarlyExit::from_plan(&l.plan, base, &l.caches)?;
        let (samples, layers) = memory_plan::prepare(&ee, &l.plan, &frames, &items, &stages, &lookup_ms);
        let scored = memory_plan::score_all(&samples, &layers, capacity_of, base_ms);
        let best = memory_plan::best_within(&scored, budget, a.margin_sigmas).clone();
        eprintln!(
            "plan-memory: learned caches at {:.2}%: alone {:.2}x, with memory {:.2}x",
            100.0 * l.budget,
            scored[0].speedup,
            best.speedup
        );
        tried.push((samples, layers, scored, best));
    }
    let pick = (0..tried.len())
        .min_by(|&x, &y| tried[x].3.mean_ms.total_cmp(&tried[y].3.mean_ms))
        .expect("the plan's own learned caches");
    let learned_tried: Vec<(f64, Scored, Scored)> = learned
        .iter()
        .zip(&tried)
        .map(|(l, t)| (l.budget, t.2[0].clone(), t.3.clone()))
        .collect();
    let chosen_learned = learned.swap_remove(pick);
    let (samples, layers, scored, best) = tried.swap_remove(pick);
    let mut plan = chosen_learned.plan.clone();
    let per_layer: Vec<Scored> = layers
        .iter()
        .map(|lk| {
            let mine: Vec<Scored> = scored.iter().filter(|s| s.layer == lk.layer).cloned().collect();
            memory_plan::best_within(&mine, budget, a.margin_sigmas).clone()
        })
        .collect();
    // Locality oracle: a request whose image came before exits at the first candidate layer.
    let first = layers.iter().min_by_key(|l| l.stage).context("no candidate layer")?;
    let mut seen = std::collections::HashSet::new();
    let oracle_ms: f64 = reqs
        .iter()
        .map(|r| if seen.insert(r.index) { base_ms } else { first.hit_ms })
        .sum::<f64>()
        / n.max(1) as f64;
    let locality_oracle_speedup = base_ms / oracle_ms;
    // How stable the base model is on this traffic: of the requests that repeat an earlier image,
    // the share whose answer differs from the one it gave that image's previous request (and among
    // those answered with confidence ≥ 0.99 the previous time).
    let mut last: std::collections::HashMap<usize, (usize, f32)> = std::collections::HashMap::new();
    let (mut repeats, mut changed, mut sure, mut sure_changed) = (0usize, 0usize, 0usize, 0usize);
    for (r, x) in reqs.iter().zip(&samples) {
        if let Some(&(class, conf)) = last.get(&r.index) {
            repeats += 1;
            changed += (class != x.base_class) as usize;
            if conf >= 0.99 {
                sure += 1;
                sure_changed += (class != x.base_class) as usize;
            }
        }
        last.insert(r.index, (x.base_class, x.base_confidence));
    }
    let base_stability = BaseStability {
        repeats: repeats as f64 / n.max(1) as f64,
        changed: changed as f64 / repeats.max(1) as f64,
        sure_previous: sure as f64 / repeats.max(1) as f64,
        sure_changed: sure_changed as f64 / sure.max(1) as f64,
    };
    let learned_only = scored[0].clone();
    let capacity = layers.iter().find(|l| l.stage == best.stage).map_or(0, capacity_of);
    if !best.layer.is_empty() {
        if !best.learned {
            plan.caches.clear();
        }
        let cost_ms = lookup_ms[stages.iter().position(|&k| k == best.stage).expect("a candidate")];
        let saved_ms: f64 = original.stage_ms[best.stage + 1..].iter().sum();
        plan.memory = Some(PlannedMemory {
            spec: memory_plan::spec_of(&best, max_bytes, a.memory_index, cost_ms, saved_ms),
            stream: stream.name(),
            stream_requests: n,
            cost_ms,
            expected: Expected {
                hit_rate: best.hit_rate,
                fidelity_loss: best.fidelity_loss,
                accuracy_loss: best.accuracy_loss,
                latency_ms: best.mean_ms,
                base_latency_ms: base_ms,
                speedup: best.speedup,
            },
            expected_without_memory: learned_only.speedup,
            locality_oracle_speedup,
        });
    } else {
        plan.memory = None;
        eprintln!(
            "plan-memory: no memory cache fits the budget on this stream; the plan keeps its learned caches only"
        );
    }
    let out_dir = a.out.clone().unwrap_or_else(|| a.plan.clone());
    plan.candidates = plan
        .candidates
        .take()
        .map(|c| if c.is_relative() { a.plan.join(c) } else { c });
    match &chosen_learned.tensors {
        // Re-made learned caches: their weights are written beside the plan.
        Some(t) => plan.save(&out_dir, t)?,
        None => {
            if out_dir != a.plan {
                std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
                let from = plan.caches_path(&a.plan);
                std::fs::copy(&from, plan.caches_path(&out_dir))
                    .with_context(|| format!("copying {} to {}", from.display(), out_dir.display()))?;
            }
            gati_core::files::write_json_atomic(&plan, &out_dir.join("plan.json"))?;
        }
    }
    let out = Output {
        plan: out_dir,
        stream: stream.name(),
        requests: n,
        budget,
        chosen: best,
        learned_only,
        locality_oracle_speedup,
        lookup_ms: layers.iter().map(|l| l.layer.clone()).zip(lookup_ms).collect(),
        lookup_latency_ms: layers.iter().map(|l| l.layer.clone()).zip(lookup_stats).collect(),
        capacity,
        base_stability,
        learned_budget: chosen_learned.budget,
        learned_tried,
        per_layer,
    };
    if a.json {
        return super::print_json(&out);
    }
    let show = |s: &Scored| {
        format!(
            "{:.2}x, hit rate {:.1}% (memory {:.1}%), fidelity loss {:.2}%",
            s.speedup,
            100.0 * s.hit_rate,
            100.0 * s.memory_hit_rate,
            100.0 * s.fidelity_loss
        )
    };
    println!("{} requests of {} (budget {:.2}%)", n, out.stream, 100.0 * budget);
    println!("  learned caches only: {}", show(&out.learned_only));
    for s in &out.per_layer {
        println!(
            "  memory at {:<10} sim ≥ {:.3}, conf ≥ {:.3}, votes {}, learned {}, remembers their hits {}, follows {}: {}",
            s.layer,
            s.min_similarity,
            s.min_confidence,
            s.min_votes,
            s.learned,
            s.remember_cache_hits,
            s.follow_hits,
            show(s)
        );
    }
    println!(
        "chosen: {} at {} — {}",
        out.chosen.layer,
        out.plan.display(),
        show(&out.chosen)
    );
    println!("locality oracle {:.2}x", out.locality_oracle_speedup);
    let b = &out.base_stability;
    println!(
        "base model on repeats ({:.1}% of requests): answer changed on {:.2}%; after a sure answer ({:.1}% of repeats) on {:.2}%",
        100.0 * b.repeats,
        100.0 * b.changed,
        100.0 * b.sure_previous,
        100.0 * b.sure_changed
    );
    Ok(())
}

/// Learned caches the memory cache may join.
struct Learned {
    budget: f64,
    plan: Plan,
    /// Weights of re-made caches (None: the plan's own file).
    tensors: Option<Vec<(String, tch::Tensor)>>,
    caches: PathBuf,
}

fn parse_fractions(list: &str) -> Result<Vec<f64>> {
    list.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f.parse::<f64>() {
            Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
            _ => bail!("--learned-budgets: '{f}' is not a fraction between 0 and 1"),
        })
        .collect()
}

/// The plan's learned caches planned again from its candidates at `budget` (its other settings
/// kept), written under `scratch`; None (with a note) when the candidates are not there or were
/// recorded for other calibration data than the plan's.
fn remake(p: &Plan, model: &BaseModel, budget: f64, scratch: &std::path::Path) -> Result<Option<Learned>> {
    let Some(cdir) = &p.candidates else {
        eprintln!("plan-memory: the plan names no candidates; only its own learned caches are scored");
        return Ok(None);
    };
    let Some(c) = Candidates::load(cdir, model, &p.weights_sha256)? else {
        eprintln!(
            "plan-memory: no candidates in {}; only the plan's learned caches are scored",
            cdir.display()
        );
        return Ok(None);
    };
    let rule = if p.calibrated_on_camera_frames {
        split::camera_frames_rule()
    } else {
        split::SPLIT_RULE.to_string()
    };
    if c.meta.split != rule || p.candidate_costs_ms.len() != c.bank.heads.len() {
        eprintln!(
            "plan-memory: the candidates in {} were recorded for other calibration data ({}); only the plan's learned caches are scored",
            cdir.display(),
            c.meta.split
        );
        return Ok(None);
    }
    let req = PlanRequest::like(p, budget);
    let (mut plan, tensors) = make_plan(&c, &p.candidate_costs_ms, &p.stage_ms, &req, &p.weights, p.threads);
    plan.test_limit = p.test_limit;
    plan.calibrated_on_camera_frames = p.calibrated_on_camera_frames;
    plan.candidates = p.candidates.clone();
    plan.stage_ms = p.stage_ms.clone();
    plan.save(scratch, &tensors)?;
    let caches = plan.caches_path(scratch);
    Ok(Some(Learned {
        budget,
        plan,
        tensors: Some(tensors),
        caches,
    }))
}

/// Stage indices of the candidate layers: named ones, or the stem and the first three blocks.
fn candidate_stages(m: &BaseModel, layers: Option<&str>) -> Result<Vec<usize>> {
    let names: Vec<&str> = m.stages().iter().map(|s| s.name.as_str()).collect();
    let Some(list) = layers else {
        return Ok((0..4.min(names.len().saturating_sub(1))).collect());
    };
    list.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match names.iter().position(|n| *n == l) {
            Some(k) if k + 1 < names.len() => Ok(k),
            _ => bail!("--layers: '{l}' is not a stage before the head ({})", names.join(", ")),
        })
        .collect()
}
