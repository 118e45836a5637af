//! The configurations a benchmark compares, and one measured run of each over a prepared stream.

use crate::inputs::Prepared;
use crate::load::{self, Load, Pace, Record, Until};
use anyhow::{Context, Result};
use gati_cache::runtime::{EarlyExit, Exit};
use gati_core::BaseModel;
use gati_server::config::{Cluster, ServeMode};
use gati_server::up::{start_local, Supervisor, UpOptions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Named on the command line (`--configs base-1,...`) by the `value` names; in report.json and
/// records.jsonl by `key` (the report's older names, kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Config {
    /// The base model alone, in-process, batch 1, one libtorch thread.
    #[value(name = "base-1")]
    BaseInProcess1,
    /// The base model alone, in-process, batch 1, a thread per core.
    #[value(name = "base-all")]
    BaseInProcessAll,
    /// The plan's early exit in-process (inline caches), at the plan's thread count.
    #[value(name = "gati-in-process")]
    GatiInProcess,
    #[value(name = "thrift-base")]
    ThriftBaseOnly,
    #[value(name = "thrift-inline")]
    ThriftInline,
    #[value(name = "thrift-distributed")]
    ThriftDistributed,
    /// Base-only through Thrift, the base worker inside the frontend's process.
    #[value(name = "thrift-base-colocated")]
    ThriftBaseColocated,
    /// Inline through Thrift, the base worker inside the frontend's process.
    #[value(name = "thrift-inline-colocated")]
    ThriftInlineColocated,
}

impl gati_core::names::Named for Config {
    fn what() -> &'static str {
        "configuration"
    }
}

impl Config {
    pub const ALL: [Config; 8] = [
        Config::BaseInProcess1,
        Config::BaseInProcessAll,
        Config::GatiInProcess,
        Config::ThriftBaseOnly,
        Config::ThriftInline,
        Config::ThriftDistributed,
        Config::ThriftBaseColocated,
        Config::ThriftInlineColocated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::BaseInProcess1 => "base in-process, 1 thread",
            Config::BaseInProcessAll => "base in-process, all cores",
            Config::GatiInProcess => "gati in-process (inline)",
            Config::ThriftBaseOnly => "base only via Thrift",
            Config::ThriftInline => "gati inline via Thrift",
            Config::ThriftDistributed => "gati distributed via Thrift",
            Config::ThriftBaseColocated => "base only via Thrift, colocated",
            Config::ThriftInlineColocated => "gati inline via Thrift, colocated",
        }
    }

    /// The name in report.json and records.jsonl.
    pub fn key(self) -> &'static str {
        match self {
            Config::BaseInProcess1 => "base-in-process1",
            Config::BaseInProcessAll => "base-in-process-all",
            Config::GatiInProcess => "gati-in-process",
            Config::ThriftBaseOnly => "thrift-base-only",
            Config::ThriftInline => "thrift-inline",
            Config::ThriftDistributed => "thrift-distributed",
            Config::ThriftBaseColocated => "thrift-base-colocated",
            Config::ThriftInlineColocated => "thrift-inline-colocated",
        }
    }

    pub fn serve_mode(self) -> Option<ServeMode> {
        match self {
            Config::ThriftBaseOnly | Config::ThriftBaseColocated => Some(ServeMode::BaseOnly),
            Config::ThriftInline | Config::ThriftInlineColocated => Some(ServeMode::Inline),
            Config::ThriftDistributed => Some(ServeMode::Distributed),
            _ => None,
        }
    }

    /// Whether its cluster runs the base worker inside the frontend's process.
    pub fn colocated(self) -> bool {
        matches!(self, Config::ThriftBaseColocated | Config::ThriftInlineColocated)
    }

    /// The base-only configuration a speed-up is taken against (same path: in-process, Thrift,
    /// or Thrift to a colocated base worker).
    pub fn baseline(self) -> Config {
        match self {
            Config::BaseInProcess1 | Config::BaseInProcessAll | Config::GatiInProcess => Config::BaseInProcess1,
            Config::ThriftBaseColocated | Config::ThriftInlineColocated => Config::ThriftBaseColocated,
            _ => Config::ThriftBaseOnly,
        }
    }
}

/// Serialised as its `key`, the name records.jsonl uses too.
impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

/// What one run of one configuration produced.
pub struct Run {
    pub load: Load,
    /// CPU seconds the serving side spent (this process in-process; the cluster's processes via Thrift).
    pub cpu_s: f64,
    /// Requests per second with enough clients to saturate the deployment (Thrift), or of the
    /// sequential run (in-process).
    pub saturation_rps: f64,
}

/// CPU seconds (user + system) of this process.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills a zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) of a process, from /proc (0 when it is gone).
pub fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Batch-1 passes of the base model alone over the stream, at `threads` libtorch threads.
pub fn base_in_process(model: &BaseModel, p: &Prepared, threads: usize, warmup: usize) -> Run {
    gati_core::set_threads(threads);
    let _g = tch::no_grad_guard();
    let xs: Vec<_> = p.pixels.iter().map(|px| model.preprocess(px)).collect();
    for x in xs.iter().take(warmup) {
        let _ = model.forward(x);
    }
    timed_in_process(&xs, |x| (gati_core::eval::argmax(&model.forward(x))[0], None))
}

/// The plan's early exit in-process over the stream.
pub fn gati_in_process(ee: &EarlyExit, p: &Prepared, threads: usize, warmup: usize) -> Run {
    gati_core::set_threads(threads);
    let _g = tch::no_grad_guard();
    let xs: Vec<_> = p.pixels.iter().map(|px| ee.model.preprocess(px)).collect();
    for x in xs.iter().take(warmup) {
        let _ = ee.infer(x);
    }
    if let Some(mem) = &ee.memory {
        mem.clear();
    }
    timed_in_process(&xs, |x| {
        let a = ee.infer(x);
        let layer = match a.exit {
            Exit::Cache(c) => Some(ee.caches[c].layer.clone()),
            Exit::Memory => ee
                .memory
                .as_ref()
                .map(|m| gati_cache::evaluate::memory_label(&m.spec.layer)),
            Exit::Base => None,
        };
        (a.class as i64, layer)
    })
}

fn timed_in_process(xs: &[tch::Tensor], mut f: impl FnMut(&tch::Tensor) -> (i64, Option<String>)) -> Run {
    let cpu0 = self_cpu_s();
    let start = Instant::now();
    let records: Vec<Record> = xs
        .iter()
        .enumerate()
        .map(|(req, x)| {
            let t = Instant::now();
            let (class, layer) = f(x);
            Record {
                req,
                ms: t.elapsed().as_secs_f64() * 1e3,
                class,
                layer,
                version: None,
            }
        })
        .collect();
    let elapsed_s = start.elapsed().as_secs_f64();
    Run {
        cpu_s: self_cpu_s() - cpu0,
        saturation_rps: records.len() as f64 / elapsed_s,
        load: Load {
            records,
            errors: BTreeMap::new(),
            elapsed_s,
        },
    }
}

/// A local cluster (one process per role) kept up across runs.
pub struct LocalCluster {
    pub cluster: Cluster,
    pub model: String,
    sup: Supervisor,
    _dir: tempfile::TempDir,
}

/// How a benchmark cluster is laid out.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Base worker on CPU 0, cache workers on CPU 1.
    pub pin: bool,
    /// `UpOptions::keep_awake`.
    pub keep_awake: bool,
    pub cache_workers: usize,
    /// `UpOptions::exact_cache_entries` (None: decided by the plan).
    pub exact_cache_entries: Option<usize>,
    /// `UpOptions::memory_at_frontend` (None: the default).
    pub memory_at_frontend: Option<bool>,
    /// TLS on every link (None: plain).
    pub tls: Option<gati_server::tls::TlsFiles>,
    /// `UpOptions::complete_on_hit_fraction`: hits checked against the base model (the frontend
    /// memory's audits among them).
    pub complete_on_hit_fraction: f64,
    /// `UpOptions::base_in_frontend`.
    pub base_in_frontend: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            pin: false,
            keep_awake: false,
            cache_workers: 1,
            exact_cache_entries: None,
            memory_at_frontend: None,
            tls: None,
            complete_on_hit_fraction: 0.0,
            base_in_frontend: false,
        }
    }
}

impl LocalCluster {
    pub fn start(exe: &Path, plan: &Path, mode: ServeMode, shape: Shape) -> Result<Self> {
        Self::start_with(exe, plan, mode, shape, 1, 2.0)
    }

    /// With the frontend's dynamic batcher on (batches of up to `max_batch`).
    pub fn start_batching(exe: &Path, plan: &Path, mode: ServeMode, max_batch: usize, delay_ms: f64) -> Result<Self> {
        Self::start_with(exe, plan, mode, Shape::default(), max_batch, delay_ms)
    }

    fn start_with(
        exe: &Path,
        plan: &Path,
        mode: ServeMode,
        shape: Shape,
        max_batch: usize,
        max_batch_delay_ms: f64,
    ) -> Result<Self> {
        let Shape {
            pin,
            keep_awake,
            cache_workers,
            exact_cache_entries,
            memory_at_frontend,
            ref tls,
            complete_on_hit_fraction,
            base_in_frontend,
        } = shape;
        let opts = UpOptions {
            plan: plan.to_path_buf(),
            mode,
            port: 0,
            cache_workers,
            base_threads: 1,
            cache_threads: 1,
            complete_on_hit_fraction,
            pin,
            keep_awake,
            metrics: false,
            max_in_flight: 128,
            auth_token_file: None,
            tls: tls.clone(),
            device: Default::default(),
            fault_cache_delay_ms: 0,
            online: None,
            max_batch,
            max_batch_delay_ms,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            fault_panic_request: None,
            exact_cache_entries,
            memory_at_frontend,
            base_in_frontend,
        };
        let dir = tempfile::tempdir()?;
        let (cluster, sup) = start_local(exe, &opts, &dir.path().join("cluster.json"))
            .with_context(|| format!("starting a {mode:?} cluster for {}", plan.display()))?;
        let model = gati_cache::plan::Plan::load(plan)?.model;
        Ok(Self {
            cluster,
            model,
            sup,
            _dir: dir,
        })
    }

    /// Empties the memory caches (base worker, cache workers) and the frontend's answers to exact
    /// repeats (a no-op where there are none).
    pub fn clear_memory(&self) {
        let c = &self.cluster;
        let timeout = Some(Duration::from_secs(10));
        let base = gati_server::net::Pool::new(
            c.base.address(),
            timeout,
            c.credentials(),
            gati_rpc::BaseWorkerSyncClient::new,
        );
        let mut failed = base.call(gati_rpc::TBaseWorkerSyncClient::clear_memory).err();
        let selector = gati_server::net::Pool::new(
            c.selector_address(),
            timeout,
            c.credentials(),
            gati_rpc::SelectorSyncClient::new,
        );
        failed = failed.or(selector.call(gati_rpc::TSelectorSyncClient::clear_memory).err());
        for w in &c.caches {
            let pool = gati_server::net::Pool::new(
                w.endpoint.address(),
                timeout,
                c.credentials(),
                gati_rpc::CacheWorkerSyncClient::new,
            );
            failed = failed.or(pool.call(gati_rpc::TCacheWorkerSyncClient::clear_memory).err());
        }
        if let Some(e) = failed {
            eprintln!("bench: clearing the memory cache failed: {e}");
        }
    }

    pub fn cpu_s(&self) -> f64 {
        self.sup.pids().into_iter().map(proc_cpu_s).sum()
    }

    /// One client for latency (closed loop, one request at a time), then `saturate` clients for
    /// throughput, both over the whole stream.
    pub fn run(&self, p: &Prepared, saturate: usize, warmup: usize, seed: u64) -> Run {
        let ep = &gati_server::client::Frontend::of(&self.cluster);
        let n = p.wire.len();
        let warm = std::sync::Arc::new(p.wire[..warmup.min(n)].to_vec());
        load::drive(
            ep,
            &self.model,
            warm,
            Pace::Closed { concurrency: 1 },
            Until::Requests(warmup),
            seed,
        );
        // Each run starts from an empty memory store: no run hits on a request an earlier one sent.
        self.clear_memory();
        let cpu0 = self.cpu_s();
        let latency = load::drive(
            ep,
            &self.model,
            p.wire.clone(),
            Pace::Closed { concurrency: 1 },
            Until::Requests(n),
            seed,
        );
        let cpu_s = self.cpu_s() - cpu0;
        self.clear_memory();
        let sat = load::drive(
            ep,
            &self.model,
            p.wire.clone(),
            Pace::Closed {
                concurrency: saturate.max(1),
            },
            Until::Requests(n),
            seed,
        );
        Run {
            cpu_s,
            saturation_rps: sat.records.len() as f64 / sat.elapsed_s,
            load: latency,
        }
    }

    pub fn stop(mut self) {
        self.sup.stop();
    }
}
