use anyhow::Result;
use gati_server::config::Cluster;
use gati_server::roles::{self, Role};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// frontend, base, cache or trainer
    role: String,
    /// Cluster description (CLUSTER.json; see docs/architecture.md)
    #[arg(long)]
    config: PathBuf,
    /// Which cache worker of the config (for role cache)
    #[arg(long, default_value_t = 0)]
    index: usize,
}

pub fn run(a: Args) -> Result<()> {
    let cluster = Cluster::load(&a.config)?;
    let role = match a.role.as_str() {
        "frontend" => Role::Frontend,
        "base" => Role::Base,
        "cache" => Role::Cache(a.index),
        "trainer" => Role::Trainer,
        other => anyhow::bail!("unknown role '{other}' (frontend, base, cache, trainer)"),
    };
    roles::run(role, &cluster)
}
