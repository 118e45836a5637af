use anyhow::{bail, Result};
use gati_bench::bench::{self, Options};
use gati_bench::measure::Config;
use gati_core::names::Named;
use gati_core::workload::Stream;
use gati_server::config::ServeMode;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory (repeat for several models: one report covers them all)
    #[arg(long, required = true)]
    plan: Vec<PathBuf>,
    /// Dataset folder (default: ../shared CIFAR-10, then datasets/)
    #[arg(long, env = "GATI_DATA")]
    data: Option<PathBuf>,
    /// Request streams over the evaluation half: iid, zipf[:s], working-set[:k[:every]], bursty-repeat[:r[:window]],
    /// door-camera[:people[:burst]]
    #[arg(long, default_value = "iid,zipf,working-set")]
    streams: String,
    /// Configurations: all, or a comma list of base-1, base-all, gati-in-process, thrift-base, thrift-inline, thrift-distributed,
    /// thrift-base-colocated, thrift-inline-colocated (the base worker inside the frontend's process)
    #[arg(long, default_value = "all")]
    configs: String,
    /// Requests per run (every configuration sends the same sequence)
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Runs per configuration; figures are the median with the min–max spread
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Untimed requests before each run
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Fidelity budgets to re-plan at (no retraining) and measure, e.g. 0.005,0.01,0.02,0.05
    #[arg(long, default_value = "")]
    budgets: String,
    /// Deployment the budget sweep measures: inline or distributed
    #[arg(long, value_enum, default_value_t = ServeMode::Inline)]
    sweep_mode: ServeMode,
    /// Closed-loop clients for the throughput-at-saturation runs (default: 2 per core)
    #[arg(long)]
    saturation_clients: Option<usize>,
    #[arg(long, default_value_t = 1)]
    cache_workers: usize,
    /// Pin base workers to CPU 0 and cache workers to CPU 1
    #[arg(long)]
    pin: bool,
    /// Keep every cluster's base worker CPU busy while it waits (`gati up --keep-awake`), base
    /// model alone and gati alike
    #[arg(long, requires = "pin")]
    keep_awake: bool,
    /// Answers the frontends keep for exact repeats (0: none) [default: as `gati up` decides from
    /// the plan]
    #[arg(long)]
    exact_cache_entries: Option<usize>,
    /// Inline with a memory cache: the frontend holds it (true) or the base worker (false)
    /// [default: the frontend when the stages up to the memory's layer take ≤ 5% of the model's time]
    #[arg(long)]
    memory_at_frontend: Option<bool>,
    /// Fraction of hits the served configurations check against the base model off the
    /// response's path (the frontend memory's guard audits these) [default: 0, none]
    #[arg(long, default_value_t = 0.0)]
    complete_fraction: f64,
    /// Serve every Thrift configuration over TLS (the cost of encryption)
    #[command(flatten)]
    tls: super::tls_args::ClusterTls,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report folder: report.json, report.md, records.jsonl, plots, re-made plans
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

fn parse_configs(spec: &str) -> Result<Vec<Config>> {
    if spec == "all" {
        return Ok(Config::ALL.to_vec());
    }
    spec.split(',')
        .map(|c| Config::parse(c.trim()).map_err(|e| anyhow::anyhow!("--configs: {e}")))
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let budgets = a
        .budgets
        .split(',')
        .filter(|b| !b.trim().is_empty())
        .map(|b| match b.trim().parse::<f64>() {
            Ok(x) if (0.0..1.0).contains(&x) => Ok(x),
            _ => bail!("--budgets: '{b}' is not a fraction in [0, 1)"),
        })
        .collect::<Result<Vec<_>>>()?;
    if a.sweep_mode == ServeMode::BaseOnly {
        bail!("--sweep-mode: a budget sweep needs caches (inline or distributed)");
    }
    let sweep_mode = a.sweep_mode;
    let mut configs = parse_configs(&a.configs)?;
    if !budgets.is_empty() && !configs.contains(&Config::ThriftBaseOnly) {
        // The sweep's speed-ups are against Thrift base-only in the same repeat.
        configs.push(Config::ThriftBaseOnly);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let o = Options {
        plans: a.plan,
        data: a.data,
        streams: Stream::parse_list(&a.streams)?,
        configs,
        requests: a.requests,
        repeat: a.repeat,
        warmup: a.warmup,
        budgets,
        sweep_mode,
        saturation_clients: a.saturation_clients.unwrap_or(2 * cores),
        cache_workers: a.cache_workers,
        pin: a.pin,
        keep_awake: a.keep_awake,
        exact_cache_entries: a.exact_cache_entries,
        memory_at_frontend: a.memory_at_frontend,
        tls: a.tls.files()?,
        complete_on_hit_fraction: a.complete_fraction,
        seed: a.seed,
        exe: std::env::current_exe()?,
        out: a.out.clone(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = bench::run(&o)?;
    if a.json {
        return super::print_json(&report);
    }
    print!("{}", gati_bench::report::markdown(&report));
    eprintln!("report written to {}", a.out.display());
    Ok(())
}
