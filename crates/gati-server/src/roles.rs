//! Running one role as this process: bind, start metrics, serve forever.

use crate::base_link::BaseLink;
use crate::config::{apply_placement, Cluster};
use crate::net;
use crate::{base_worker, cache_worker, frontend, trainer};
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

impl Role {
    /// The role named `name` (`cache` is the cache worker `index` of the config).
    pub fn parse(name: &str, index: usize) -> Result<Self> {
        Ok(match name {
            "frontend" => Role::Frontend,
            "base" => Role::Base,
            "cache" => Role::Cache(index),
            "trainer" => Role::Trainer,
            other => anyhow::bail!("unknown role '{other}' (frontend, base, cache, trainer)"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Base => "base",
            Role::Cache(_) => "cache",
            Role::Trainer => "trainer",
        }
    }

    /// This role's entry in `cluster`.
    pub fn endpoint_mut<'a>(&self, cluster: &'a mut Cluster) -> Result<&'a mut crate::config::Endpoint> {
        Ok(match *self {
            Role::Frontend => &mut cluster.frontend,
            Role::Base => &mut cluster.base,
            Role::Cache(i) => &mut cluster.cache_mut(i)?.endpoint,
            Role::Trainer => {
                &mut cluster
                    .trainer
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("the cluster config has no trainer"))?
                    .endpoint
            }
        })
    }
}

/// Starts `/metrics`, `/health` and `/ready`; workers start it once their model is loaded, so they
/// are ready from then on.
fn start_metrics(addr: &Option<String>, registry: &Registry, ready: Option<crate::metrics::Readiness>) -> Result<()> {
    if let Some(a) = addr {
        let bound = crate::metrics::serve(a, registry.clone(), ready.unwrap_or_else(|| Box::new(|| true)))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    Ok(())
}

/// Serves `role` of `cluster` until the process is killed.
pub fn run(role: Role, cluster: &Cluster) -> Result<()> {
    crate::logs::init();
    let registry = Registry::new();
    crate::metrics::register_process(&registry, role.name())?;
    match role {
        Role::Base => {
            if cluster.base_in_frontend {
                anyhow::bail!(
                    "base_in_frontend: the base worker runs inside the frontend's process; start the frontend"
                );
            }
            apply_placement(&cluster.base)?;
            let (listener, addr) = net::bind(&cluster.base.listen)?;
            let worker = Arc::new(base_worker::BaseWorker::new(cluster, &registry, 1)?);
            start_metrics(&cluster.base.metrics, &registry, None)?;
            tracing::info!(mode = ?cluster.mode, "base worker on {addr}");
            net::serve(
                listener,
                Arc::new(BaseWorkerSyncProcessor::new(base_worker::Handler(worker))),
                cluster.internal_limits(),
            );
        }
        Role::Cache(i) => {
            let me = cluster.cache(i)?;
            apply_placement(&me.endpoint)?;
            let (listener, addr) = net::bind(&me.endpoint.listen)?;
            let worker = Arc::new(cache_worker::CacheWorker::new(cluster, i, &registry)?);
            start_metrics(&me.endpoint.metrics, &registry, None)?;
            tracing::info!(index = i, layers = %me.layers.join(","), "cache worker on {addr}");
            net::serve(
                listener,
                Arc::new(CacheWorkerSyncProcessor::new(cache_worker::Handler(worker))),
                cluster.internal_limits(),
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
            start_metrics(&me.endpoint.metrics, &registry, None)?;
            let l = t.clone();
            std::thread::spawn(move || l.run());
            tracing::info!("trainer on {addr}");
            net::serve(
                listener,
                Arc::new(TrainerSyncProcessor::new(trainer::Handler(t))),
                cluster.internal_limits(),
            );
        }
        Role::Frontend => {
            apply_placement(if cluster.base_in_frontend {
                &cluster.base
            } else {
                &cluster.frontend
            })?;
            let (sel_listener, sel_addr) = net::bind(&cluster.selector)?;
            let (listener, addr) = net::bind(&cluster.frontend.listen)?;
            let base = if cluster.base_in_frontend {
                let (base_listener, base_addr) = net::bind(&cluster.base.listen)?;
                let worker = Arc::new(base_worker::BaseWorker::new(cluster, &registry, 1)?);
                // Its Thrift service stays up for the trainer and `gati admin`.
                let p = Arc::new(BaseWorkerSyncProcessor::new(base_worker::Handler(worker.clone())));
                let l = cluster.internal_limits();
                std::thread::spawn(move || net::serve(base_listener, p, l));
                tracing::info!(mode = ?cluster.mode, "base worker in this process, also on {base_addr}");
                BaseLink::local(worker, cluster.base.address())
            } else {
                BaseLink::remote(cluster)
            };
            // What base requests name as their selector: the advertised address, else the bound
            // one (which has the real port where the config says 0).
            let named = cluster.selector_advertise.clone().unwrap_or_else(|| sel_addr.clone());
            let fe = Arc::new(frontend::Frontend::new(cluster, &named, &registry, base)?);
            let probe = fe.clone();
            start_metrics(
                &cluster.frontend.metrics,
                &registry,
                Some(Box::new(move || probe.is_ready())),
            )?;
            let sel = Arc::new(SelectorSyncProcessor::new(frontend::SelectorHandler(fe.clone())));
            let l = cluster.internal_limits();
            std::thread::spawn(move || net::serve(sel_listener, sel, l));
            frontend::watch_workers(fe.clone());
            tracing::info!(selector = %sel_addr, "frontend on {addr}");
            net::serve(
                listener,
                Arc::new(GatiSyncProcessor::new(frontend::GatiHandler(fe))),
                cluster.public_limits(),
            );
        }
    }
    // Drained (SIGTERM): leave now. A normal exit would run libtorch's static destructors while
    // this process's other threads (trainer loop, sample collection) may still call into it.
    exit_now()
}

/// Ends the process at once with status 0, after flushing what it printed.
fn exit_now() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) ends the process without running atexit handlers; nothing is left to save
    // (every file gati writes is written atomically before it is used).
    unsafe { libc::_exit(0) }
}
