use anyhow::Result;
use gati_core::device::DeviceName;
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
    /// Run this role's models on cpu, cuda or cuda:N (overrides the role's `device` in the config)
    #[arg(long)]
    device: Option<DeviceName>,
}

pub fn run(a: Args) -> Result<()> {
    let mut cluster = Cluster::load(&a.config)?;
    let role = Role::parse(&a.role, a.index)?;
    if let Some(d) = a.device {
        role.endpoint_mut(&mut cluster)?.device = d;
        cluster.check()?;
    }
    roles::run(role, &cluster)
}
