use anyhow::Result;
use gati_core::eval;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    md: super::data_args::ModelData,
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate only the first N samples (class-balanced for image folders)
    #[arg(long)]
    limit: Option<usize>,
    /// libtorch intra-op threads (0 = libtorch's default)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Samples for the batch-1 latency profile
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also write the normalised latency-profile inputs (`x`, `[N,3,H,W]`) as safetensors, so a
    /// reference implementation can be timed on exactly the same tensors (scripts/bench_base.py)
    #[arg(long)]
    save_inputs: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    weights: PathBuf,
    data: PathBuf,
    split: String,
    n: usize,
    top1: f64,
    threads: i32,
    latency_ms: gati_core::stats::LatencyStats,
    latency_samples: usize,
    stages: Vec<eval::StageTiming>,
}

pub fn run(a: Args) -> Result<()> {
    gati_core::set_threads(a.threads);
    let (model, weights, data_dir) = a.md.load()?;
    let ds = super::data_args::load_split(&model, &data_dir, &a.split, a.limit)?;
    let logits = eval::predict(&model, &ds, a.batch);
    let top1 = eval::top1(&logits, &ds.labels);
    let profile = eval::profile_latency(&model, &ds, a.latency_samples, 20);
    if let Some(path) = &a.save_inputs {
        let n = profile.samples.min(ds.len());
        let x = model.preprocess(&ds.pixel_range(0, n));
        gati_core::files::write_atomic(&[("x".to_string(), x)], path)?;
    }
    let report = Report {
        model: a.md.model,
        weights,
        data: data_dir,
        split: a.split,
        n: ds.len(),
        top1,
        threads: profile.threads,
        latency_ms: profile.latency_ms,
        latency_samples: profile.samples,
        stages: profile.stages,
    };
    if a.json {
        return super::print_json(&report);
    }
    println!(
        "{} on {} ({} split, {} images): top-1 {:.2}%",
        report.model,
        report.data.display(),
        report.split,
        report.n,
        report.top1
    );
    let l = &report.latency_ms;
    println!(
        "batch-1 latency over {} images, {} threads: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        report.latency_samples, report.threads, l.mean, l.p50, l.p99
    );
    println!("{:<10} {:>9} {:>8}", "stage", "ms", "cum %");
    for s in &report.stages {
        println!("{:<10} {:>9.4} {:>7.1}%", s.name, s.ms, 100.0 * s.cum_fraction);
    }
    Ok(())
}
