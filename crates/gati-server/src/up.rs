//! `gati up`: a whole local cluster from a plan — free loopback ports, one process per role,
//! health-checked, restarted with backoff if one dies, all stopped together.

use crate::config::{CacheEndpoint, Cluster, Endpoint, ServeMode, TrainerEndpoint};
use anyhow::{bail, Context, Result};
use gati_core::device::DeviceName;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct UpOptions {
    pub plan: PathBuf,
    pub mode: ServeMode,
    pub port: u16,
    pub cache_workers: usize,
    pub base_threads: usize,
    pub cache_threads: usize,
    pub complete_on_hit_fraction: f64,
    /// Pin the base worker to CPU 0 and the cache workers to CPU 1 (the paper's layout on 2 cores).
    pub pin: bool,
    /// Keep the base worker's CPU busy while it waits (`Endpoint::keep_awake`; needs `pin`).
    pub keep_awake: bool,
    pub metrics: bool,
    /// Requests the frontend admits at once; more get `Overloaded`.
    pub max_in_flight: usize,
    /// Internal services require the token in this file.
    pub auth_token_file: Option<PathBuf>,
    /// Where the base and cache workers run their models.
    pub device: DeviceName,
    /// TLS certificates (`Cluster::tls`; None: plain links).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Fault injection for tests: every cache lookup sleeps this long.
    pub fault_cache_delay_ms: u64,
    /// Online learning (a trainer process); None: the plan's caches, frozen.
    pub online: Option<OnlineOptions>,
    /// The frontend's dynamic batcher: largest batch (1: off) and how long a batch waits to fill.
    pub max_batch: usize,
    pub max_batch_delay_ms: f64,
    /// A connection idle this long is closed.
    pub idle_timeout_ms: u64,
    /// A request must arrive whole within this long once started.
    pub frame_timeout_ms: u64,
    /// Fault injection for tests: the base worker panics on the request with this id.
    pub fault_panic_request: Option<String>,
    /// `Cluster::memory_at_frontend` (None: the default).
    pub memory_at_frontend: Option<bool>,
    /// `Cluster::exact_cache_entries` (None: decided by the plan).
    pub exact_cache_entries: Option<usize>,
    /// `Cluster::base_in_frontend`.
    pub base_in_frontend: bool,
}

pub struct OnlineOptions {
    pub state_dir: Option<PathBuf>,
    pub retrain_every: usize,
    pub steps: usize,
    pub buffer_mb: f64,
    /// Disagreement allowed among a learned cache's hits (None: half the plan's budget).
    pub error_target: Option<f64>,
    pub poll_ms: u64,
    /// Fault injection for tests: pause between the steps of writing a version.
    pub fault_write_delay_ms: u64,
}

/// Free local ports for one cluster, all distinct: each stays bound until the `Ports` is dropped,
/// so the kernel cannot hand the same port to two roles.
#[derive(Default)]
struct Ports(Vec<std::net::TcpListener>);

impl Ports {
    fn pick(&mut self) -> Result<u16> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        self.0.push(l);
        Ok(port)
    }
}

/// A local endpoint listening on `port`, or on a free one.
fn endpoint(
    ports: &mut Ports,
    port: Option<u16>,
    threads: usize,
    cpus: Vec<usize>,
    metrics: bool,
    device: DeviceName,
) -> Result<Endpoint> {
    let port = match port {
        Some(p) => p,
        None => ports.pick()?,
    };
    Ok(Endpoint {
        advertise: None,
        listen: format!("127.0.0.1:{port}"),
        metrics: if metrics {
            Some(format!("127.0.0.1:{}", ports.pick()?))
        } else {
            None
        },
        threads,
        cpus,
        keep_awake: false,
        beside_cpu: None,
        device,
    })
}

/// CPU placement of a pinned local deployment: the base worker on CPU 0; on CPU 1 the cache
/// workers (distributed), or the caches the plan runs beside the base model (inline) and a
/// frontend of its own. The base model alone is measured on CPU 0 too, so a cluster is compared
/// with it on the same core.
#[derive(Debug, PartialEq)]
struct Placement {
    base: Vec<usize>,
    beside: Option<usize>,
    frontend: Vec<usize>,
}

fn placement(pin: bool, mode: ServeMode, beside: bool, base_in_frontend: bool) -> Placement {
    if !pin {
        return Placement {
            base: vec![],
            beside: None,
            frontend: vec![],
        };
    }
    Placement {
        base: vec![0],
        beside: (mode == ServeMode::Inline && beside).then_some(1),
        // In the base worker's process it takes the base worker's CPU; with cache workers it
        // goes where the scheduler finds room.
        frontend: if base_in_frontend || mode == ServeMode::Distributed {
            vec![]
        } else {
            vec![1]
        },
    }
}

/// The cluster config for a local deployment of `o.plan`; the plan's cache layers (learned and
/// memory) are dealt round-robin to the cache workers.
pub fn local_cluster(o: &UpOptions) -> Result<Cluster> {
    let plan = gati_cache::plan::Plan::load(&o.plan)?;
    let cpus = |c: usize| if o.pin { vec![c] } else { vec![] };
    let mut ports = Ports::default();
    let mut caches = Vec::new();
    let cache_layers = plan.cache_layers();
    if o.mode == ServeMode::Distributed && !cache_layers.is_empty() {
        let n = o.cache_workers.clamp(1, cache_layers.len());
        for i in 0..n {
            let layers = cache_layers.iter().skip(i).step_by(n).map(|(_, l)| l.clone()).collect();
            caches.push(CacheEndpoint {
                endpoint: endpoint(&mut ports, None, o.cache_threads, cpus(1), o.metrics, o.device)?,
                layers,
                fault_delay_ms: o.fault_cache_delay_ms,
            });
        }
    }
    let mode = if o.mode == ServeMode::Distributed && caches.is_empty() {
        ServeMode::BaseOnly
    } else {
        o.mode
    };
    let placed = placement(o.pin, mode, plan.caches.iter().any(|c| c.beside), o.base_in_frontend);
    let mut c = Cluster {
        selector_advertise: None,
        exact_cache_entries: o.exact_cache_entries,
        memory_at_frontend: o.memory_at_frontend,
        base_in_frontend: o.base_in_frontend,
        plan: std::path::absolute(&o.plan)?,
        mode,
        frontend: endpoint(
            &mut ports,
            (o.port != 0).then_some(o.port),
            1,
            placed.frontend,
            o.metrics,
            DeviceName::CPU,
        )?,
        selector: format!("127.0.0.1:{}", ports.pick()?),
        base: Endpoint {
            keep_awake: o.keep_awake,
            beside_cpu: placed.beside,
            ..endpoint(
                &mut ports,
                None,
                o.base_threads,
                placed.base,
                // In the frontend's process its metrics are the frontend's.
                o.metrics && !o.base_in_frontend,
                o.device,
            )?
        },
        caches,
        complete_on_hit_fraction: o.complete_on_hit_fraction,
        max_frame_bytes: 16 << 20,
        max_connections: 10_000,
        max_connections_per_peer: 1024,
        idle_timeout_ms: o.idle_timeout_ms,
        frame_timeout_ms: o.frame_timeout_ms,
        max_batch: o.max_batch,
        max_batch_delay_ms: o.max_batch_delay_ms,
        fault_panic_request: o.fault_panic_request.clone(),
        max_in_flight: o.max_in_flight,
        default_deadline_ms: 5000,
        auth_token_file: o.auth_token_file.clone(),
        trainer: match &o.online {
            None => None,
            Some(l) => Some(TrainerEndpoint {
                // The trainer shares the cache workers' core, at low priority.
                endpoint: endpoint(&mut ports, None, 1, cpus(1), o.metrics, DeviceName::CPU)?,
                state_dir: l.state_dir.clone().map(std::path::absolute).transpose()?,
                buffer_mb: l.buffer_mb,
                evidence: 1500,
                retrain_every: l.retrain_every,
                steps: l.steps,
                error_target: l.error_target,
                poll_ms: l.poll_ms,
                nice: 10,
                fault_write_delay_ms: l.fault_write_delay_ms,
            }),
        },
        tls: o.tls.clone(),
        token: None,
        tls_loaded: None,
    };
    c.check()?;
    c.load_secrets()?; // fail here, not in every role, on an unreadable token or TLS file
    Ok(c)
}

struct Proc {
    args: Vec<String>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
}

/// The processes of a cluster, started from this executable (`gati serve ROLE --config FILE`).
pub struct Supervisor {
    exe: PathBuf,
    procs: Vec<Proc>,
}

impl Supervisor {
    pub fn start(exe: &Path, cluster: &Cluster, config_path: &Path) -> Result<Self> {
        gati_core::files::write_bytes_atomic(config_path, &serde_json::to_vec_pretty(cluster)?)?;
        let cfg = config_path.display().to_string();
        let mut roles = Vec::new();
        if !cluster.base_in_frontend {
            roles.push(vec!["serve".into(), "base".into(), "--config".into(), cfg.clone()]);
        }
        for i in 0..cluster.caches.len() {
            roles.push(vec![
                "serve".into(),
                "cache".into(),
                "--index".into(),
                i.to_string(),
                "--config".into(),
                cfg.clone(),
            ]);
        }
        if cluster.trainer.is_some() {
            roles.push(vec!["serve".into(), "trainer".into(), "--config".into(), cfg.clone()]);
        }
        roles.push(vec!["serve".into(), "frontend".into(), "--config".into(), cfg]);
        let mut s = Self {
            exe: exe.to_path_buf(),
            procs: roles
                .into_iter()
                .map(|args| Proc {
                    args,
                    child: None,
                    restarts: 0,
                    next_start: Instant::now(),
                })
                .collect(),
        };
        for i in 0..s.procs.len() {
            s.spawn(i)?;
        }
        Ok(s)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let p = &mut self.procs[i];
        let child = Command::new(&self.exe)
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} {}", self.exe.display(), p.args.join(" ")))?;
        p.child = Some(child);
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(|c| c.id()))
            .collect()
    }

    /// Restarts any process that exited, with exponential backoff (0.5 s doubling to 10 s).
    pub fn supervise(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if !exited {
                continue;
            }
            let p = &mut self.procs[i];
            if p.child.take().is_some() {
                let backoff = Duration::from_millis(500 * (1u64 << p.restarts.min(5))).min(Duration::from_secs(10));
                p.next_start = Instant::now() + backoff;
                p.restarts += 1;
                eprintln!(
                    "gati up: '{}' exited; restarting in {:.1} s",
                    p.args[..2].join(" "),
                    backoff.as_secs_f64()
                );
            }
            if Instant::now() >= self.procs[i].next_start {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// True once any process has exited (before it is restarted).
    pub fn any_exited(&mut self) -> Result<bool> {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                if c.try_wait()?.is_some() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Stops every process: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster process exited before the cluster was healthy.
#[derive(Debug, thiserror::Error)]
#[error("a cluster process exited during start-up (see its error above)")]
pub struct ExitedDuringStartUp;

/// Waits until the frontend answers `health()` with every worker reachable, and `models()`: only
/// the frontend's service has it, so another role answering on the frontend's port is never taken
/// for a healthy frontend.
pub fn wait_healthy(cluster: &Cluster, sup: &mut Supervisor, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if sup.any_exited()? {
            return Err(ExitedDuringStartUp.into());
        }
        if let Ok(mut c) = crate::client::Frontend::of(cluster).connect(Duration::from_secs(2)) {
            use gati_rpc::TGatiSyncClient;
            if let Ok(h) = c.health() {
                if h.ok && h.workers.values().all(|&up| up) && c.models().is_ok_and(|m| !m.is_empty()) {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > timeout {
            bail!("cluster not healthy after {:.0} s", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a local cluster for `o` (config written to `config_path`) and waits until it is
/// healthy. Its ports are picked free beforehand, so another process can take one before a role
/// binds it: a cluster whose process exits during start-up is started again on fresh ports (three
/// tries in all).
pub fn start_local(exe: &Path, o: &UpOptions, config_path: &Path) -> Result<(Cluster, Supervisor)> {
    let mut tries = 0;
    loop {
        tries += 1;
        let cluster = local_cluster(o)?;
        let mut sup = Supervisor::start(exe, &cluster, config_path)?;
        match wait_healthy(&cluster, &mut sup, Duration::from_secs(120)) {
            Ok(()) => return Ok((cluster, sup)),
            Err(e) if tries < 3 && e.is::<ExitedDuringStartUp>() => {
                sup.stop();
                // `gati up` and the benchmark install no logger: plain stderr, as the supervisor's.
                eprintln!("gati up: {e}; starting the cluster again on other ports");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base worker keeps CPU 0 in every mode (the base model alone is measured there); only
    /// an inline cluster with students beside gives them CPU 1; a frontend of its own takes CPU 1
    /// unless cache workers are there.
    #[test]
    fn the_base_worker_keeps_cpu_0_and_students_beside_get_cpu_1() {
        let p = |mode, beside, colocated| placement(true, mode, beside, colocated);
        let (inline, base_only, distributed) = (ServeMode::Inline, ServeMode::BaseOnly, ServeMode::Distributed);
        for (mode, beside) in [(inline, true), (inline, false), (base_only, true), (distributed, true)] {
            assert_eq!(p(mode, beside, false).base, vec![0]);
        }
        assert_eq!(p(inline, true, false).beside, Some(1));
        assert_eq!(p(inline, false, false).beside, None);
        assert_eq!(p(base_only, true, false).beside, None);
        assert_eq!(p(distributed, true, false).beside, None);
        assert_eq!(p(inline, true, false).frontend, vec![1]);
        assert_eq!(p(base_only, true, false).frontend, vec![1]);
        assert!(p(inline, true, true).frontend.is_empty());
        assert!(p(distributed, true, false).frontend.is_empty());
        let unpinned = placement(false, inline, true, false);
        assert!(unpinned.base.is_empty() && unpinned.beside.is_none() && unpinned.frontend.is_empty());
    }
}
