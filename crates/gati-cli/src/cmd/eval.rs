use anyhow::{bail, Result};
use gati_core::data::lfw;
use gati_core::models::Task;
use gati_core::{eval, verify, BaseModel};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    md: super::data_args::ModelData,
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate only the first N samples (class-balanced for image folders); for an embedding
    /// model on LFW, the first N matched and N mismatched pairs of each fold
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

#[derive(Serialize)]
struct VerificationReport {
    model: String,
    weights: PathBuf,
    data: PathBuf,
    protocol: &'static str,
    /// Side of the centre crop taken from the 250x250 LFW images before resizing.
    crop: u32,
    verification: verify::Verification,
    threads: i32,
    latency_ms: gati_core::stats::LatencyStats,
    latency_samples: usize,
    stages: Vec<eval::StageTiming>,
}

/// An embedding model on LFW: the 10-fold verification protocol of `pairs.txt`.
fn run_verification(a: Args, model: BaseModel, weights: PathBuf, data_dir: PathBuf) -> Result<()> {
    if !lfw::looks_like_lfw(&data_dir) {
        bail!(
            "{} outputs embeddings: evaluate it on LFW (a folder with images/ and pairs.txt), not {}",
            a.md.model,
            data_dir.display()
        );
    }
    let (v, images) = verify::lfw_verification(&model, &data_dir, a.limit, a.batch)?;
    let profile = eval::profile_latency(&model, &images, a.latency_samples, 20);
    save_inputs(a.save_inputs.as_deref(), &model, &images, profile.samples)?;
    let report = VerificationReport {
        model: a.md.model,
        weights,
        data: data_dir,
        protocol: "lfw-pairs-10-fold",
        crop: lfw::crop_size(),
        verification: v,
        threads: profile.threads,
        latency_ms: profile.latency_ms,
        latency_samples: profile.samples,
        stages: profile.stages,
    };
    if a.json {
        return super::print_json(&report);
    }
    let v = &report.verification;
    println!(
        "{} on LFW verification ({} pairs, {} folds, L2, crop {}): {:.2}% ± {:.2}",
        report.model, v.pairs, v.folds, report.crop, v.mean, v.std
    );
    print_latency(
        &report.latency_ms,
        report.latency_samples,
        report.threads,
        &report.stages,
    );
    Ok(())
}

/// `--save-inputs`: the first `n` normalised inputs the latency profile ran on.
fn save_inputs(
    path: Option<&std::path::Path>,
    model: &BaseModel,
    ds: &gati_core::data::Dataset,
    n: usize,
) -> Result<()> {
    if let Some(path) = path {
        let x = model.preprocess(&ds.pixel_range(0, n.min(ds.len())));
        gati_core::files::write_atomic(&[("x".to_string(), x)], path)?;
    }
    Ok(())
}

fn print_latency(l: &gati_core::stats::LatencyStats, samples: usize, threads: i32, stages: &[eval::StageTiming]) {
    println!(
        "batch-1 latency over {samples} images, {threads} threads: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        l.mean, l.p50, l.p99
    );
    println!("{:<16} {:>9} {:>8}", "stage", "ms", "cum %");
    for s in stages {
        println!("{:<16} {:>9.4} {:>7.1}%", s.name, s.ms, 100.0 * s.cum_fraction);
    }
}

pub fn run(a: Args) -> Result<()> {
    gati_core::set_threads(a.threads);
    let (model, weights, data_dir) = a.md.load()?;
    if model.spec().task == Task::Embedding {
        return run_verification(a, model, weights, data_dir);
    }
    let ds = super::data_args::load_split(&model, &data_dir, &a.split, a.limit)?;
    let logits = eval::predict(&model, &ds, a.batch);
    let top1 = eval::top1(&logits, &ds.labels);
    let profile = eval::profile_latency(&model, &ds, a.latency_samples, 20);
    save_inputs(a.save_inputs.as_deref(), &model, &ds, profile.samples)?;
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
    print_latency(
        &report.latency_ms,
        report.latency_samples,
        report.threads,
        &report.stages,
    );
    Ok(())
}
