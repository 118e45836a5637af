//! Running one role as this process: bind, start metrics, serve forever.

use crate::config::{apply_placement, Cluster};
use crate::net::{self, Limits};
use crate::{base, cache, frontend, trainer};
use anyhow::Result;
use gati_rpc::*;
use prometheus::Registry;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Frontend,
    Base,
    Cache(usize),
    Trainer,
}

/// Limits of an internal service (base, cache, selector): the cluster's token applies.
fn limits(c: &Cluster) -> Limits {
    Limits {
        max_frame_bytes: c.max_frame_bytes,
        max_connections: c.max_connections,
        token: c.token.clone(),
    }
}

/// Limits of the public `Gati` service: open to any Thrift client.
fn public_limits(c: &Cluster) -> Limits {
    Limits {
        token: None,
        ..limits(c)
    }
}

fn start_metrics(addr: &Option<String>, registry: &Registry) -> Result<()> {
    if let Some(a) = addr {
        let bound = crate::metrics::serve(a, registry.clone())?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    Ok(())
}

/// Serves `role` of `cluster` until the process is killed.
pub fn run(role: Role, cluster: &Cluster) -> Result<()> {
    let registry = Registry::new();
    match role {
        Role::Base => {
            apply_placement(&cluster.base)?;
            let (listener, addr) = net::bind(&cluster.base.listen)?;
            let worker = Arc::new(base::BaseWorker::new(cluster, &registry, 1)?);
            start_metrics(&cluster.base.metrics, &registry)?;
            eprintln!("base worker ({:?} mode) on {addr}", cluster.mode);
            net::serve(
                listener,
                Arc::new(BaseWorkerSyncProcessor::new(base::Handler(worker))),
                limits(cluster),
            );
        }
        Role::Cache(i) => {
            let me = cluster
                .caches
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("no caches[{i}] in the cluster config"))?;
            apply_placement(&me.endpoint)?;
            let (listener, addr) = net::bind(&me.endpoint.listen)?;
            let worker = Arc::new(cache::CacheWorker::new(cluster, i, &registry)?);
            start_metrics(&me.endpoint.metrics, &registry)?;
            eprintln!("cache worker {i} ({}) on {addr}", me.layers.join(","));
            net::serve(
                listener,
                Arc::new(CacheWorkerSyncProcessor::new(cache::Handler(worker))),
                limits(cluster),
            );
        }
        Role::Trainer => {
            let me = cluster
                .trainer
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the cluster config has no trainer section"))?;
            apply_placement(&me.endpoint)?;
            trainer::set_nice(me.nice);
            let (listener, addr) = net::bind(&me.endpoint.listen)?;
            let t = Arc::new(trainer::Trainer::new(cluster, &registry)?);
            start_metrics(&me.endpoint.metrics, &registry)?;
            let l = t.clone();
            std::thread::spawn(move || l.run());
            eprintln!("trainer on {addr}");
            net::serve(
                listener,
                Arc::new(TrainerSyncProcessor::new(trainer::Handler(t))),
                limits(cluster),
            );
        }
        Role::Frontend => {
            apply_placement(&cluster.frontend)?;
            let (sel_listener, sel_addr) = net::bind(&cluster.selector)?;
            let (listener, addr) = net::bind(&cluster.frontend.listen)?;
            let fe = Arc::new(frontend::Frontend::new(cluster, &sel_addr, &registry)?);
            start_metrics(&cluster.frontend.metrics, &registry)?;
            let sel = Arc::new(SelectorSyncProcessor::new(frontend::SelectorHandler(fe.clone())));
            let l = limits(cluster);
            std::thread::spawn(move || net::serve(sel_listener, sel, l));
            frontend::watch_workers(fe.clone());
            eprintln!("frontend on {addr} (selector on {sel_addr})");
            net::serve(
                listener,
                Arc::new(GatiSyncProcessor::new(frontend::GatiHandler(fe))),
                public_limits(cluster),
            );
        }
    }
    Ok(())
}
