use super::data_args::load_split;
use anyhow::Result;
use gati_cache::candidates::Candidates;
use gati_cache::runtime::EarlyExit;
use gati_cache::{evaluate, split};
use gati_core::names::Named;
use gati_core::workload::{stream_dataset, Stream};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory written by `gati plan`
    #[arg(long)]
    plan: PathBuf,
    /// Dataset folder (default: as for `gati plan`)
    #[arg(long, env = "GATI_DATA")]
    data: Option<PathBuf>,
    /// Test images before halving (default: the plan's --test-limit, so the halves match)
    #[arg(long)]
    test_limit: Option<usize>,
    /// libtorch threads (default: the plan's)
    #[arg(long)]
    threads: Option<usize>,
    /// Measure on a request stream over the evaluation half (e.g. bursty-repeat, frames) instead
    /// of its images once each, in order
    #[arg(long)]
    stream: Option<String>,
    /// Requests of the stream
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Seed of the stream (the plan's calibration stream used seed 1)
    #[arg(long, default_value_t = 2)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    plan: PathBuf,
    model: String,
    mode: gati_cache::planner::Mode,
    budget: f64,
    budget_kind: gati_cache::decision::BudgetKind,
    expected: gati_cache::plan::Expected,
    /// The stream measured on (absent: the evaluation half's images once each).
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(flatten)]
    report: evaluate::Report,
}

pub fn run(a: Args) -> Result<()> {
    let (plan, ee) = EarlyExit::load(&a.plan)?;
    gati_core::set_threads(a.threads.unwrap_or(plan.threads.max(1) as usize));
    let dir = gati_core::paths::data_dir_for(&plan.model, a.data.as_deref())?;
    let test = load_split(&ee.model, &dir, "test", a.test_limit.or(plan.test_limit))?;
    let (_, ei) = split::calibration_evaluation(&test.labels);
    let eval_half = test.subset(&ei);
    let stream = a.stream.as_deref().map(Stream::parse).transpose()?;
    let measured = stream
        .as_ref()
        .map(|s| stream_dataset(&eval_half, &s.generate(&eval_half.labels, a.requests, a.seed)));
    let mut report = evaluate::evaluate(&ee, measured.as_ref().unwrap_or(&eval_half), 50);
    if let (None, Some(cdir)) = (&stream, &plan.candidates) {
        if let Ok(Some(c)) = Candidates::load(cdir, &ee.model, &plan.weights_sha256) {
            if c.evaluation.len() == eval_half.len() && plan.candidate_costs_ms.len() == c.bank.heads.len() {
                report.oracle_speedup = Some(evaluate::oracle_speedup(
                    &c,
                    &plan.candidate_costs_ms,
                    &plan.stage_ms,
                    None,
                ));
            }
        }
    }
    let out = Output {
        plan: a.plan,
        model: plan.model.clone(),
        mode: plan.mode,
        budget: plan.budget,
        budget_kind: plan.budget_kind,
        expected: plan
            .memory
            .as_ref()
            .filter(|_| stream.is_some())
            .map_or_else(|| plan.expected.clone(), |m| m.expected.clone()),
        stream: stream.map(|s| s.name()),
        report,
    };
    if a.json {
        return super::print_json(&out);
    }
    let r = &out.report;
    println!(
        "{} plan {} on {} evaluation images ({} threads)",
        out.model,
        out.plan.display(),
        r.n,
        r.threads
    );
    println!(
        "top-1: base {:.2}%, gati {:.2}%; fidelity loss {:.2}%, accuracy loss {:.2}% (budget {:.2}% {})",
        r.base_top1,
        r.gati_top1,
        100.0 * r.fidelity_loss,
        100.0 * r.accuracy_loss,
        100.0 * out.budget,
        out.budget_kind.name()
    );
    for l in &r.hit_rate_per_layer {
        println!(
            "  {:<10} {:<10} hit rate {:>5.1}%",
            l.layer,
            l.variant,
            100.0 * l.hit_rate
        );
    }
    let (b, g) = (&r.base_latency_ms, &r.gati_latency_ms);
    println!("latency ms   mean     p50     p99");
    println!("  base     {:>7.3} {:>7.3} {:>7.3}", b.mean, b.p50, b.p99);
    println!("  gati     {:>7.3} {:>7.3} {:>7.3}", g.mean, g.p50, g.p99);
    if let Some(m) = &r.memory {
        println!(
            "memory: {} lookups, {} skipped by the gate, {} hits; {:.3} ms per request ({:.1}% of the base model's)",
            m.lookups,
            m.skipped,
            m.hits,
            m.ms_per_request,
            100.0 * m.share_of_base_latency
        );
    }
    print!("speed-up {:.2}x (planned {:.2}x)", r.speedup, out.expected.speedup);
    match r.oracle_speedup {
        Some(o) => println!(", oracle {o:.2}x"),
        None => println!(),
    }
    Ok(())
}
