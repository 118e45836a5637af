//! How the frontend reaches its base worker: over Thrift (its own process, perhaps on another
//! machine), or as a call within the frontend's process (`Cluster::base_in_frontend`), which
//! saves a loopback round trip per request. Both answer with the same values and errors, so the
//! frontend is written once.

use crate::base_worker::{self, BaseWorker};
use crate::config::Cluster;
use crate::net::{self, Pool};
use gati_rpc::*;
use std::sync::Arc;
use std::time::Duration;

type BaseClient = BaseWorkerSyncClient<net::In, net::Out>;

pub enum BaseLink {
    Remote {
        /// Runs (a long timeout: a run may queue for a replica up to its deadline).
        runs: Pool<BaseClient>,
        /// Cancels and health checks (a short timeout, never behind a run).
        control: Pool<BaseClient>,
    },
    Local {
        worker: base_worker::Handler,
        /// The address its Thrift service listens on, for the trainer and health reports.
        addr: String,
    },
}

impl BaseLink {
    /// The cluster's base worker, over Thrift.
    pub fn remote(cluster: &Cluster) -> Self {
        let (addr, credentials) = (cluster.base.address(), cluster.credentials());
        // Twice the default deadline: the worker answers a run by its deadline, queueing included.
        let run_timeout = Duration::from_millis(cluster.default_deadline_ms.max(1000) * 2);
        BaseLink::Remote {
            runs: Pool::new(addr, Some(run_timeout), credentials.clone(), BaseWorkerSyncClient::new),
            control: Pool::new(
                addr,
                Some(Duration::from_secs(2)),
                credentials,
                BaseWorkerSyncClient::new,
            ),
        }
    }

    pub fn local(worker: Arc<BaseWorker>, addr: &str) -> Self {
        BaseLink::Local {
            worker: base_worker::Handler(worker),
            addr: addr.to_string(),
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            BaseLink::Remote { runs, .. } => runs.addr(),
            BaseLink::Local { addr, .. } => addr,
        }
    }

    pub fn run(&self, req: BaseRequest) -> thrift::Result<BaseResult> {
        match self {
            BaseLink::Remote { runs, .. } => runs.call(|c| c.run(req)),
            BaseLink::Local { worker, .. } => worker.handle_run(req),
        }
    }

    pub fn run_batch(&self, reqs: Vec<BaseRequest>) -> thrift::Result<Vec<BaseOutcome>> {
        match self {
            BaseLink::Remote { runs, .. } => runs.call(|c| c.run_batch(reqs)),
            BaseLink::Local { worker, .. } => worker.handle_run_batch(reqs),
        }
    }

    /// Asks the base worker to stop a run between stages. Best effort: a run not stopped only
    /// finishes; a worker not reached loses its pooled connections, so the next call reconnects.
    pub fn cancel(&self, id: String) {
        match self {
            BaseLink::Remote { control, .. } => {
                Self::control(control, |c| c.cancel(id));
            }
            BaseLink::Local { worker, .. } => {
                let _ = worker.handle_cancel(id);
            }
        }
    }

    /// Whether the base worker answers its health check.
    pub fn healthy(&self) -> bool {
        match self {
            BaseLink::Remote { control, .. } => Self::control(control, |c| c.health()),
            BaseLink::Local { worker, .. } => worker.handle_health().is_ok(),
        }
    }

    fn control<T>(pool: &Pool<BaseClient>, f: impl FnOnce(&mut BaseClient) -> thrift::Result<T>) -> bool {
        let ok = pool.call(f).is_ok();
        if !ok {
            pool.reset();
        }
        ok
    }
}
