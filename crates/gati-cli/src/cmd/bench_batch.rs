use anyhow::{bail, Result};
use gati_bench::batching::{self, Options};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory written by `gati plan`
    #[arg(long)]
    plan: PathBuf,
    /// Dataset folder (default: ../shared CIFAR-10, then datasets/)
    #[arg(long, env = "GATI_DATA")]
    data: Option<PathBuf>,
    /// Batch sizes to measure, e.g. 1,4,16,64
    #[arg(long, default_value = "1,4,16,64")]
    batch_sizes: String,
    /// Requests per run (from the evaluation half)
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Runs per configuration; figures are the median with the min–max spread
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// How long the frontend's batcher waits for a batch to fill (ms)
    #[arg(long, default_value_t = 2.0)]
    max_batch_delay_ms: f64,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let batch_sizes = a
        .batch_sizes
        .split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => bail!("--batch-sizes: '{b}' is not a batch size in [1, 1024]"),
        })
        .collect::<Result<Vec<_>>>()?;
    if a.repeat == 0 || a.requests == 0 {
        bail!("--repeat and --requests must be positive");
    }
    let data = batching::evaluation_data(&a.plan, a.data.as_deref())?;
    let o = Options {
        plan: a.plan,
        batch_sizes,
        requests: a.requests,
        repeat: a.repeat,
        max_batch_delay_ms: a.max_batch_delay_ms,
        exe: std::env::current_exe()?,
    };
    let report = batching::run(&o, &data)?;
    if a.json {
        return super::print_json(&report);
    }
    print!("{}", batching::markdown(&report));
    Ok(())
}
