//! `gati`: learned caches for faster DNN inference. One binary, one subcommand per job.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gati", version, about = "Accelerate DNN inference with learned caches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Top-1 accuracy and batch-1 latency profile of a base model on a dataset split
    Eval(cmd::eval::Args),
    /// Convert a PyTorch checkpoint (.th/.pth/.pt) or TF.js weights into safetensors the Rust models load
    ImportWeights(cmd::import::Args),
    /// Write a split's decoded pixels and labels as safetensors (for training in another framework)
    ExportData(cmd::export_data::Args),
    /// Fit face-lfw62's identification classifier on the face ResNet's LFW embeddings
    FitClassifier(cmd::fit_classifier::Args),
    /// List a model's stages and their output shapes
    Stages(cmd::stages::Args),
    /// Train cache models, calibrate hit decisions and choose layers for a fidelity budget
    Plan(cmd::plan::Args),
    /// Plan a memory cache for traffic with locality: scored with the plan's learned caches on a
    /// calibration stream (repeats, camera frames)
    PlanMemory(cmd::plan_memory::Args),
    /// Copy a plan with everything serving it needs (base weights included) into one folder that
    /// can be moved to another machine
    ExportPlan(cmd::export_plan::Args),
    /// Measure a plan in-process on the evaluation half: early exit vs the base model alone
    Evaluate(cmd::evaluate::Args),
    /// Run one process role of a cluster (frontend, base, cache, trainer)
    Serve(cmd::serve::Args),
    /// Start a whole local cluster from a plan and keep it running until Ctrl-C / SIGTERM
    Up(cmd::up::Args),
    /// Call a running frontend
    Client(cmd::client::Args),
    /// Operator controls of online learning: versions, pin, rollback, pause
    Admin(cmd::admin::Args),
    /// Closed- or open-loop load against a frontend, with latency and hit-rate figures
    Loadgen(cmd::loadgen::Args),
    /// Benchmark: base model alone vs gati over request streams, repeated and interleaved; report and plots
    Bench(cmd::bench::Args),
    /// Throughput and p50/p99 by batch size: base model alone vs gati, in-process and through the frontend's batcher
    BenchBatch(cmd::bench_batch::Args),
}

/// Help and version print as clap renders them; a usage error is one line, like every other error
/// (`error: invalid value 'x' for '--mode <MODE>' [possible values: inline, distributed]`).
fn exit_on_usage(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    let text = e.render().to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    eprintln!("{}", line.join(" "));
    std::process::exit(2);
}

fn main() {
    gati_core::tune_allocator();
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_on_usage(e));
    let result = match cli.command {
        Command::Eval(a) => cmd::eval::run(a),
        Command::ImportWeights(a) => cmd::import::run(a),
        Command::ExportData(a) => cmd::export_data::run(a),
        Command::FitClassifier(a) => cmd::fit_classifier::run(a),
        Command::Stages(a) => cmd::stages::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::PlanMemory(a) => cmd::plan_memory::run(a),
        Command::ExportPlan(a) => cmd::export_plan::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Client(a) => cmd::client::run(a),
        Command::Admin(a) => cmd::admin::run(a),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::BenchBatch(a) => cmd::bench_batch::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
