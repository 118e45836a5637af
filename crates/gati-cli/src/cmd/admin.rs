//! `gati admin`: operator controls of online learning, through the trainer's `Trainer` service.

use anyhow::{anyhow, Result};
use gati_rpc::{TTrainerSyncClient, TrainerSyncClient, Versions};
use gati_server::client::describe;
use gati_server::config::Cluster;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The cluster's CLUSTER.json (`gati up --json` prints where it is)
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// The versions, the serving one, and what each worker serves
    Versions,
    /// Serve this version (e.g. v3; v0 is the plan) and stop promoting until `unpin`
    Pin { version: String },
    /// Let learning promote new versions again
    Unpin,
    /// Pin the version before the serving one
    Rollback,
    /// Stop collecting samples and training (the serving version stays)
    Pause,
    /// Resume collecting samples and training
    Resume,
}

pub fn run(a: Args) -> Result<()> {
    let cluster = Cluster::load(&a.config)?;
    let t = cluster
        .trainer
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no trainer (start the cluster with --online)", a.config.display()))?;
    let addr = t.endpoint.address();
    let (i, o) = gati_server::net::connect_with(addr, Some(Duration::from_secs(60)), &cluster.credentials())
        .map_err(|e| anyhow!("trainer at {addr}: {e:?}"))?;
    let mut c = TrainerSyncClient::new(i, o);
    let v = match a.what {
        What::Versions => c.versions(),
        What::Pin { version } => c.pin(version),
        What::Unpin => c.unpin(),
        What::Rollback => c.rollback(),
        What::Pause => c.pause(true),
        What::Resume => c.pause(false),
    }
    .map_err(|e| anyhow!("trainer at {addr}: {}", describe(&e)))?;
    if a.json {
        super::print_json(&to_json(&v))
    } else {
        print!("{}", to_text(&v));
        Ok(())
    }
}

fn to_json(v: &Versions) -> serde_json::Value {
    serde_json::json!({
        "serving": v.serving,
        "pinned": v.pinned,
        "paused": v.paused,
        "versions": v.versions.iter().map(|x| serde_json::json!({
            "version": x.version,
            "created_unix": x.created_unix,
            "note": x.note,
            "disabled_layers": x.disabled_layers,
        })).collect::<Vec<_>>(),
        "workers": v.workers,
    })
}

fn to_text(v: &Versions) -> String {
    let mut s = format!(
        "serving {}{}{}\n",
        v.serving,
        v.pinned.as_ref().map_or(String::new(), |p| format!(" (pinned {p})")),
        if v.paused { ", learning paused" } else { "" }
    );
    for x in &v.versions {
        let mark = if x.version == v.serving { "*" } else { " " };
        let off = if x.disabled_layers.is_empty() {
            String::new()
        } else {
            format!(" [off: {}]", x.disabled_layers.join(", "))
        };
        s += &format!("{mark} {:<5} {}{off}\n", x.version, x.note);
    }
    for (w, ver) in &v.workers {
        s += &format!("  worker {w}: {ver}\n");
    }
    s
}
