use super::data_args::{load_split, ModelData};
use anyhow::{bail, Result};
use gati_cache::decision::{BudgetKind, DecisionKind};
use gati_cache::plan::{make_plan, PlanRequest};
use gati_cache::planner::Mode;
use gati_cache::train::TrainConfig;
use gati_cache::{pipeline, split, Variant};
use gati_core::names::Named;
use gati_core::{eval, weights, BaseModel};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    md: ModelData,
    /// Budget: the fraction of requests whose answer may differ from the base model's (fidelity),
    /// or of top-1 accuracy that may be lost (--budget-kind accuracy)
    #[arg(long, default_value_t = 0.01)]
    budget: f64,
    /// What the budget limits: fidelity (agreement with the base model) or accuracy (top-1 against
    /// the labels; labelled data only)
    #[arg(long, value_enum, default_value_t = BudgetKind::Fidelity)]
    budget_kind: BudgetKind,
    /// Survivor-aware calibration: rounds of re-fitting each chosen cache's thresholds on the
    /// samples the caches before it miss, then planning again (0: off)
    #[arg(long, default_value_t = 2)]
    survivor_rounds: usize,
    /// Calibrate on the first N calibration samples only (the test split's half comes first, then
    /// the --holdout images): for ablations
    #[arg(long)]
    calibration_limit: Option<usize>,
    /// Plan with these trained variants only (comma list; default: all trained): for ablations
    #[arg(long)]
    plan_variants: Option<String>,
    /// inline (caches in the base model's thread) or distributed (caches on other cores/processes)
    #[arg(long, value_enum, default_value_t = Mode::Inline)]
    mode: Mode,
    /// Hit decision: threshold (per-class confidence thresholds) or selector (logistic regression)
    #[arg(long, value_enum, default_value_t = DecisionKind::Threshold)]
    decision: DecisionKind,
    /// Output plan directory (plan.json, caches.safetensors)
    #[arg(long)]
    out: PathBuf,
    /// Where trained candidates are kept and reused (default: OUT/candidates)
    #[arg(long)]
    candidates: Option<PathBuf>,
    /// Retrain even if matching candidates exist
    #[arg(long)]
    retrain: bool,
    /// libtorch threads for latency measurement and planning (batch 1)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// libtorch threads for training (0 = all cores)
    #[arg(long, default_value_t = 0)]
    train_threads: usize,
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Train on the first N training images only (class-balanced)
    #[arg(long)]
    train_limit: Option<usize>,
    /// Split(s) the heads distil from, joined by '+' (LFW: train+others adds every face outside
    /// the 62 identities; distillation needs no labels)
    #[arg(long, default_value = "train")]
    train_split: String,
    /// Hold the last N images of the training split out of head training and calibrate on them
    /// beside the test split's calibration half (CIFAR: 5000 = the 500 per class that
    /// scripts/finetune-bases.sh also kept from the fine-tuned bases)
    #[arg(long, default_value_t = 0)]
    holdout: usize,
    /// Train heads on random crops and horizontal flips (--augment false: the images as they are)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    augment: bool,
    /// Use the first N test images (class-balanced) before cutting calibration/evaluation halves
    #[arg(long)]
    test_limit: Option<usize>,
    /// Fit the hit decisions on one camera frame of each calibration image (shifted, contrast,
    /// brightness, noise: the door-camera stream's perturbations) instead of the image itself
    #[arg(long)]
    calibrate_on_camera_frames: bool,
    /// Candidate layers: all, or a comma list of stage names (e.g. layer1.2,layer2.0); `all` is
    /// every residual block, and the stem too where --variants has student
    #[arg(long, default_value = "all")]
    layers: String,
    /// Cache variants to train: all, or a comma list of fc,pool,conv,gap,conv-pool,conv3-pool,
    /// conv3-mix,branch,student (`all`: every one but student)
    #[arg(long, default_value = "all")]
    variants: String,
    /// The smaller base that `student` caches start from: a CIFAR ResNet-20 trained on the same
    /// data (e.g. resnet20-jpeg for resnet56-jpeg, or resnet20-jpeg-kd56: distilled from resnet56-jpeg,
    /// with the adapter it was distilled through); its weights are found as --model's are
    #[arg(long)]
    student_init: Option<String>,
    /// Inline mode: run student caches on a second thread beside the base model, so that the
    /// requests they miss do not wait for them (uses a second core, which the base model at
    /// batch 1 barely uses)
    #[arg(long)]
    students_beside: bool,
    /// A student's learning rate relative to a fresh head's [default: 0.05]. A student starts
    /// trained: where its agreement with the base falls in the first steps, training restarts it
    /// at a tenth of this rate (up to three times)
    #[arg(long)]
    student_lr_factor: Option<f64>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Base learning rate (each head's is scaled down by its input size; see docs/architecture.md)
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Distributed mode: base-side cost of sending one activation (ms)
    #[arg(long, default_value_t = 0.05)]
    send_ms: f64,
    /// Distributed mode: delay before a cache worker starts on an activation (ms)
    #[arg(long, default_value_t = 0.3)]
    transfer_ms: f64,
    /// Safety margin: plan for w + z·√w ≤ budget·n disagreements on calibration data (z = this;
    /// see `DEFAULT_MARGIN_SIGMAS`)
    #[arg(long, default_value_t = gati_cache::plan::DEFAULT_MARGIN_SIGMAS)]
    margin_sigmas: f64,
    /// Upper bound on the chosen caches' parameter memory (MiB)
    #[arg(long)]
    memory_budget_mb: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct HeadRow {
    layer: String,
    variant: Variant,
    params: i64,
    cost_ms: f64,
    train_fidelity: f64,
    calibration_fidelity: f64,
    evaluation_fidelity: f64,
}

#[derive(Serialize)]
struct Output<'a> {
    plan_dir: &'a PathBuf,
    trained: bool,
    train_seconds: f64,
    /// The student's learning-rate factor after training's guard (absent without a student).
    #[serde(skip_serializing_if = "Option::is_none")]
    student_lr_factor: Option<f64>,
    plan: &'a gati_cache::plan::Plan,
    candidates: Vec<HeadRow>,
}

/// Candidate stages: every residual block (not the stem or the head), or the named ones.
fn candidate_stages(model: &BaseModel, spec: &str) -> Result<Vec<usize>> {
    let n = model.num_stages();
    if spec == "all" {
        return Ok((1..n - 1).collect());
    }
    let mut v = Vec::new();
    for name in spec.split(',').map(str::trim) {
        match model.stage_index(name) {
            Some(k) if k + 1 < n => v.push(k),
            Some(_) => bail!("--layers: '{name}' is the head; caches attach to earlier stages"),
            None => bail!(
                "--layers: {} has no stage '{name}' (see `gati stages`)",
                model.spec().name
            ),
        }
    }
    v.sort();
    v.dedup();
    Ok(v)
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..1.0).contains(&a.budget) {
        bail!("--budget must be in [0, 1), got {}", a.budget);
    }
    let (mode, decision) = (a.mode, a.decision);
    let variants = Variant::parse_list(&a.variants)?;
    if let Some(f) = a.student_lr_factor.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
        bail!("--student-lr-factor {f}: must be in (0, 1]");
    }
    if a.students_beside && mode != Mode::Inline {
        bail!("--students-beside is for --mode inline (in distributed mode every cache runs beside the base model)");
    }
    gati_core::set_threads(if a.train_threads == 0 {
        num_cpus()
    } else {
        a.train_threads
    });
    let (model, weights_path, dir) = a.md.load()?;
    let mut stages = candidate_stages(&model, &a.layers)?;
    if variants.contains(&Variant::Student) {
        match (a.layers.as_str(), stages.first()) {
            ("all", _) => stages.insert(0, 0),
            (_, Some(0)) => {}
            _ => bail!("--variants student: a student reads the stem; add stem to --layers"),
        }
    }
    let student_init = match (&a.student_init, variants.contains(&Variant::Student)) {
        (Some(name), true) => Some(BaseModel::load(
            name,
            &gati_core::paths::resolve_weights(name, None)?,
            model.device(),
        )?),
        (None, true) => bail!(
            "--variants student needs --student-init: a CIFAR ResNet-20 trained on the same data (e.g. resnet20-jpeg)"
        ),
        (Some(_), false) => bail!("--student-init is given but --variants has no student"),
        (None, false) if a.students_beside => bail!("--students-beside is given but --variants has no student"),
        (None, false) if a.student_lr_factor.is_some() => {
            bail!("--student-lr-factor is given but --variants has no student")
        }
        (None, false) => None,
    };
    let student_adapter = a
        .student_init
        .as_deref()
        .and_then(|s| gati_core::paths::student_adapter(s, &a.md.model));
    let sha = weights::sha256_file(&weights_path)?;
    if model.spec().task != gati_core::models::Task::Classification {
        bail!(
            "--model {}: caches predict classes; plan an identification model (e.g. face-lfw62)",
            a.md.model
        );
    }
    let mut train = load_split(&model, &dir, &a.train_split, a.train_limit)?;
    let test = load_split(&model, &dir, "test", a.test_limit)?;
    let (ci, ei) = split::calibration_evaluation(&test.labels);
    let (mut calibration, evaluation) = (test.subset(&ci), test.subset(&ei));
    if a.holdout > 0 {
        if a.holdout >= train.len() {
            bail!(
                "--holdout {} leaves no training images (the split has {})",
                a.holdout,
                train.len()
            );
        }
        let cut = train.len() - a.holdout;
        let held = train.subset(&(cut..train.len()).collect::<Vec<_>>());
        train = train.truncate(cut);
        calibration = gati_core::data::Dataset::concat(vec![calibration, held]);
    }
    let outcomes_rule = if a.calibrate_on_camera_frames {
        calibration = gati_core::workload::camera_frames(&calibration, a.seed);
        split::camera_frames_rule()
    } else {
        split::SPLIT_RULE.to_string()
    };
    let config = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        train_limit: a.train_limit,
        train_split: a.train_split.clone(),
        holdout: a.holdout,
        augment: a.augment,
        student_init: a.student_init.clone(),
        student_lr_factor: a.student_lr_factor,
        ..Default::default()
    };
    let cand_dir = a.candidates.clone().unwrap_or_else(|| a.out.join("candidates"));
    let inputs = pipeline::Inputs {
        model: &model,
        weights_sha256: &sha,
        train: &train,
        calibration: &calibration,
        evaluation: &evaluation,
        stages: &stages,
        variants: &variants,
        config: &config,
        outcomes_rule: &outcomes_rule,
        student_init: student_init.as_ref(),
        student_adapter: student_adapter.as_deref(),
    };
    let (cands, trained) = pipeline::prepare(&inputs, &cand_dir, a.retrain)?;

    gati_core::set_threads(a.threads);
    let costs = cands.bank.measure_costs(&model, 100)?;
    let profile = eval::profile_latency(&model, &calibration, 300, 30);
    let stage_ms: Vec<f64> = profile.stages.iter().map(|s| s.ms).collect();
    let students_beside = match cands.bank.heads.iter().position(|h| h.variant == Variant::Student) {
        Some(h) if a.students_beside => {
            let inputs: Vec<_> = (0..calibration.len().min(100))
                .map(|i| model.preprocess(&calibration.pixel_range(i, i + 1)))
                .collect();
            let b = gati_cache::beside::measure(&model, &cands.bank, h, costs[h], &inputs, 300)?;
            eprintln!(
                "a student beside the base model: answers {:.3} ms after the hand-off, slows the base model by {:.3} ms",
                b.latency_ms, b.slowdown_ms
            );
            Some(b)
        }
        _ => None,
    };
    let req = PlanRequest {
        mode,
        budget: a.budget,
        margin_sigmas: a.margin_sigmas,
        decision,
        send_ms: a.send_ms,
        transfer_ms: a.transfer_ms,
        memory_budget_mb: a.memory_budget_mb,
        budget_kind: a.budget_kind,
        survivor_rounds: a.survivor_rounds,
        calibration_limit: a.calibration_limit,
        variants: a.plan_variants.as_deref().map(Variant::parse_list).transpose()?,
        students_beside,
    };
    let (mut plan, tensors) = make_plan(&cands, &costs, &stage_ms, &req, &weights_path, tch::get_num_threads());
    plan.test_limit = a.test_limit;
    plan.calibrated_on_camera_frames = a.calibrate_on_camera_frames;
    plan.candidates = Some(std::path::absolute(&cand_dir)?);
    plan.save(&a.out, &tensors)?;

    let rows: Vec<HeadRow> = cands
        .bank
        .heads
        .iter()
        .enumerate()
        .map(|(h, e)| HeadRow {
            layer: e.layer.clone(),
            variant: e.variant,
            params: e.params,
            cost_ms: costs[h],
            train_fidelity: cands.meta.train_fidelity.get(h).copied().unwrap_or(f64::NAN),
            calibration_fidelity: cands.calibration.fidelity(h),
            evaluation_fidelity: cands.evaluation.fidelity(h),
        })
        .collect();
    if a.json {
        return super::print_json(&Output {
            plan_dir: &a.out,
            trained,
            train_seconds: cands.meta.train_seconds,
            student_lr_factor: cands.meta.student_lr_factor,
            plan: &plan,
            candidates: rows,
        });
    }
    let e = &plan.expected;
    println!(
        "plan for {} ({} mode, budget {:.2}%, {} decisions) -> {}",
        plan.model,
        mode.name(),
        100.0 * plan.budget,
        decision.name(),
        a.out.display()
    );
    for c in &plan.caches {
        println!(
            "  {:<10} {:<10} {:>9} params {:>7.3} ms  answers {:>5.1}% of requests{}",
            c.layer,
            c.variant.name(),
            c.params,
            c.cost_ms,
            100.0 * c.expected_hit_rate,
            if c.beside { " (beside the base model)" } else { "" }
        );
    }
    println!(
        "expected on {} calibration images: hit rate {:.1}%, fidelity loss {:.2}%, accuracy loss {:.2}%, latency {:.3} ms vs base {:.3} ms ({:.2}x); planned in {:.3} s",
        plan.calibration_samples,
        100.0 * e.hit_rate,
        100.0 * e.fidelity_loss,
        100.0 * e.accuracy_loss.unwrap_or(f64::NAN),
        e.latency_ms,
        e.base_latency_ms,
        e.speedup,
        plan.planning_seconds
    );
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
