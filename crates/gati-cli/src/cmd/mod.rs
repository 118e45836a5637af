pub mod admin;
pub mod bench;
pub mod bench_batch;
pub mod client;
mod data_args;
pub mod eval;
pub mod evaluate;
pub mod export_data;
pub mod export_plan;
pub mod fit_classifier;
pub mod import;
pub mod loadgen;
pub mod plan;
pub mod plan_memory;
pub mod serve;
pub mod stages;
mod tls_args;
pub mod up;

use serde::Serialize;

/// Prints one JSON object on stdout (the `--json` contract: nothing else goes to stdout).
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
