use anyhow::Result;
use gati_cache::plan::Plan;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory to export
    #[arg(long)]
    plan: PathBuf,
    /// New folder: plan.json, the caches' and the base model's weights, named relative to it
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let plan = Plan::load(&a.plan)?;
    plan.export(&a.plan, &a.out)?;
    let (files, sizes): (Vec<String>, Vec<u64>) = std::fs::read_dir(&a.out)?
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len()))
        })
        .unzip();
    let bytes: u64 = sizes.iter().sum();
    if a.json {
        super::print_json(&serde_json::json!({"out": a.out, "files": files, "bytes": bytes}))?;
    } else {
        println!(
            "exported {} ({} files, {:.1} MB)",
            a.out.display(),
            files.len(),
            bytes as f64 / 1e6
        );
    }
    Ok(())
}
