//! The base worker: runs the base model stage by stage through `EarlyExit::walk`, on a batch of
//! one request (`run`) or many (`run_batch`). Distributed mode: after each planned stage the
//! activation is handed to a sender thread that streams it to the cache worker (the model never
//! waits for the network); between stages a cancelled request stops. Inline mode: the plan's
//! caches run here, between stages, and a request they answer leaves the batch. With online
//! learning on, every complete run leaves a sample (the activations at the planned stages and
//! the logits) in a bounded buffer that the trainer drains; the request path only ever tries the
//! buffer's lock.

use crate::config::{Cluster, ServeMode};
use crate::errors::ServingError;
use crate::learning::{self, Collected, SampleRing, StartVersion};
use crate::memory_audit::MemoryAuditor;
use crate::metrics::registered;
use crate::net::{self, Pool};
use crate::resources::{lock, panic_message, GaugeGuard, LeasePool};
use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use gati_cache::plan::Plan;
use gati_cache::runtime::{EarlyExit, Hit, Hooks, Walked};
use gati_core::BaseModel;
use gati_rpc::convert::{tensor_from_wire, tensor_to_wire};
use gati_rpc::*;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;

type CacheClient = CacheWorkerSyncClient<net::In, net::Out>;

/// One activation on its way to a cache worker.
struct Outgoing {
    request_id: String,
    stage: i32,
    tensor: Tensor,
    selector: String,
}

/// A sender thread per cache worker, fed through a bounded queue: a slow or dead cache worker
/// drops activations (counted) instead of delaying the base model.
struct CacheLink {
    addr: String,
    queue: Sender<Outgoing>,
    up: Arc<AtomicBool>,
}

impl CacheLink {
    fn start(addr: &str, credentials: net::Credentials, dropped: IntCounterVec, sent: IntCounterVec) -> Self {
        let (tx, rx): (Sender<Outgoing>, Receiver<Outgoing>) = bounded(256);
        let up = Arc::new(AtomicBool::new(true));
        let pool: Pool<CacheClient> = Pool::new(
            addr,
            Some(Duration::from_secs(2)),
            credentials,
            CacheWorkerSyncClient::new,
        );
        let (a, u) = (addr.to_string(), up.clone());
        std::thread::spawn(move || {
            for o in rx {
                let act = Activation {
                    request_id: o.request_id,
                    stage: o.stage,
                    tensor: tensor_to_wire(&o.tensor),
                    selector: o.selector,
                };
                match pool.call(|c| c.lookup(act)) {
                    Ok(()) => {
                        u.store(true, Ordering::Relaxed);
                        sent.with_label_values(&[&a]).inc();
                    }
                    Err(_) => {
                        // Down: the request degrades to the base model's answer for this layer.
                        u.store(false, Ordering::Relaxed);
                        dropped.with_label_values(&[&a]).inc();
                        pool.reset();
                    }
                }
            }
        });
        Self {
            addr: addr.to_string(),
            queue: tx,
            up,
        }
    }
}

struct Metrics {
    samples: IntCounterVec,
    samples_dropped: IntCounterVec,
    sample_bytes: IntGauge,
    serving_version: IntGauge,
    stage_seconds: HistogramVec,
    queue_depth: IntGauge,
    requests: IntCounterVec,
    cancelled: IntCounter,
    stages_run: IntCounter,
    dropped: IntCounterVec,
    in_flight: IntGauge,
    batch_size: prometheus::Histogram,
}

/// A model replica and the cache version it serves (inline mode).
struct Replica {
    ee: EarlyExit,
    version: String,
}

pub struct BaseWorker {
    replicas: LeasePool<Replica>,
    /// One install at a time (an install holds every replica).
    installing: Mutex<()>,
    planned: Vec<String>,
    /// Online learning: stages sampled (in plan order) and the buffer the trainer drains.
    sample_stages: Vec<usize>,
    samples: Option<Mutex<SampleRing>>,
    inline: bool,
    input_shape: [i64; 3],
    stage_names: Vec<String>,
    links: BTreeMap<i32, CacheLink>,
    cancelled: Mutex<HashMap<String, Instant>>,
    /// Fault injection for tests: a run of the request with this id panics after its first stage.
    fault_panic_request: Option<String>,
    /// The memory cache every replica shares (inline mode, when the plan has one).
    memory: Option<Arc<gati_cache::memory::MemoryCache>>,
    /// Checks the memory's hits sampled to complete (`complete_on_hit_fraction` above 0).
    memory_auditor: Option<MemoryAuditor>,
    /// Where the model and the inline caches run.
    device: tch::Device,
    metrics: Metrics,
}

impl BaseWorker {
    pub fn new(cluster: &Cluster, registry: &Registry, replicas: usize) -> Result<Self> {
        let device = cluster.base.device.open().context("base")?;
        let plan = Plan::load(&cluster.plan)?;
        cluster.check_layers(&plan)?;
        let inline = cluster.mode == ServeMode::Inline;
        let mut serving = plan.clone();
        if !inline {
            serving.caches.clear();
        }
        if !inline || cluster.memory_at_frontend(&plan) {
            serving.memory = None;
        }
        let start = if inline {
            StartVersion::read(cluster)?
        } else {
            StartVersion::plan()
        };
        // One memory store for the worker (built with the first replica, shared by the rest): a
        // near-duplicate hits whichever replica runs it.
        let mut rest = serving.clone();
        rest.memory = None;
        let mut pool: Vec<Replica> = Vec::new();
        for _ in 0..replicas.max(1) {
            let model = BaseModel::load(&plan.model, &plan.weights, device)?;
            let this = if pool.is_empty() { &serving } else { &rest };
            let mut ee = EarlyExit::from_plan(this, model, &plan.caches_path(&cluster.plan))?;
            if let Some(cpu) = cluster.base.beside_cpu {
                ee.beside_on_cpu(cpu)?;
            }
            if let Some(first) = pool.first() {
                ee.memory.clone_from(&first.ee.memory);
            }
            start.install(&mut ee)?;
            let version = start.name.clone();
            pool.push(Replica { ee, version });
        }
        let memory = pool[0].ee.memory.clone();
        if let Some(mem) = &memory {
            registry.register(Box::new(crate::metrics::MemoryCollector::new(mem.clone())?))?;
        }
        let memory_auditor = match &memory {
            Some(mem) if cluster.complete_on_hit_fraction > 0.0 => {
                Some(MemoryAuditor::start(&plan, mem.clone(), None)?)
            }
            _ => None,
        };
        let input_shape = pool[0].ee.model.spec().input_shape;
        let stage_names = pool[0].ee.model.stages().iter().map(|s| s.name.clone()).collect();
        let c = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let g = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let metrics = Metrics {
            samples: c(
                "gati_online_samples_total",
                "Samples collected for online learning, by kind (uniform: sampled to complete; miss)",
                &["kind"],
            )?,
            samples_dropped: c(
                "gati_online_samples_dropped_total",
                "Samples lost: buffer busy, or evicted unread because the buffer was full",
                &["reason"],
            )?,
            sample_bytes: g("gati_online_buffer_bytes", "Memory held by collected samples")?,
            serving_version: g(
                "gati_serving_version",
                "Cache version served (inline caches; 0 is the plan)",
            )?,
            stage_seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("gati_base_stage_seconds", "Time of each base stage (one batch)")
                        .buckets(prometheus::exponential_buckets(1e-5, 1.6, 20)?),
                    &["stage"],
                )?,
            )?,
            queue_depth: g("gati_base_queue_depth", "Runs waiting for a model replica")?,
            requests: c("gati_base_requests_total", "Base runs by outcome", &["outcome"])?,
            cancelled: registered(
                registry,
                IntCounter::new("gati_base_cancelled_total", "Runs stopped early by a cancel")?,
            )?,
            stages_run: registered(
                registry,
                IntCounter::new("gati_base_stages_run_total", "Base stages executed (once per batch)")?,
            )?,
            dropped: c(
                "gati_base_activations_dropped_total",
                "Activations not delivered",
                &["cache_worker"],
            )?,
            in_flight: g("gati_base_in_flight", "Runs in progress")?,
            batch_size: registered(
                registry,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new("gati_base_batch_size", "Requests per base run")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
                )?,
            )?,
        };
        let sent = c(
            "gati_base_activations_sent_total",
            "Activations streamed",
            &["cache_worker"],
        )?;
        let mut links = BTreeMap::new();
        if cluster.mode == ServeMode::Distributed {
            for (stage, layer) in plan.cache_layers() {
                if let Some(addr) = cluster.cache_for_layer(&layer) {
                    links.insert(
                        stage as i32,
                        CacheLink::start(addr, cluster.credentials(), metrics.dropped.clone(), sent.clone()),
                    );
                }
            }
        }
        metrics.serving_version.set(learning::version_number(&start.name));
        Ok(Self {
            replicas: LeasePool::new(pool),
            installing: Mutex::new(()),
            planned: plan.caches.iter().map(|c| c.layer.clone()).collect(),
            sample_stages: plan.caches.iter().map(|c| c.stage).collect(),
            samples: cluster
                .trainer
                .as_ref()
                .map(|t| Mutex::new(SampleRing::new(t.buffer_mb))),
            inline,
            input_shape,
            stage_names,
            device,
            links,
            cancelled: Mutex::new(HashMap::new()),
            fault_panic_request: cluster.fault_panic_request.clone(),
            memory,
            memory_auditor,
            metrics,
        })
    }

    fn is_cancelled(&self, id: &str) -> bool {
        lock(&self.cancelled).contains_key(id)
    }

    /// The request's input, checked: `[1, C, H, W]` of the model's input shape.
    fn input(&self, req: &BaseRequest) -> Result<Tensor, InvalidInput> {
        let x = tensor_from_wire(&req.input)?;
        let [c, h, w] = self.input_shape;
        if x.size() != [1, c, h, w] {
            return Err(InvalidInput {
                message: format!("input shape {:?}, expected [1, {c}, {h}, {w}]", x.size()),
            });
        }
        Ok(x)
    }

    /// Runs `reqs` as one batch; one outcome per request, in order. A malformed request fails
    /// alone; a run that fails (a bug, a libtorch error) fails the requests in it with
    /// `Unavailable`, and the replica goes back to the pool all the same.
    fn run_batch(&self, reqs: &[BaseRequest]) -> Vec<BaseOutcome> {
        let t0 = Instant::now();
        let mut outcomes: Vec<Option<BaseOutcome>> = Vec::with_capacity(reqs.len());
        let mut batch = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            match self.input(r) {
                Ok(x) => {
                    batch.push((i, x));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(BaseOutcome::Invalid(e))),
            }
        }
        if !batch.is_empty() {
            let (idx, xs): (Vec<usize>, Vec<Tensor>) = batch.into_iter().unzip();
            let run: Vec<&BaseRequest> = idx.iter().map(|&i| &reqs[i]).collect();
            let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_admitted(&run, &xs, t0)))
                .unwrap_or_else(|p| {
                    let message = format!("base run failed: {}", panic_message(&*p));
                    tracing::error!(requests = run.len(), "{message}");
                    self.metrics
                        .requests
                        .with_label_values(&["failed"])
                        .inc_by(run.len() as u64);
                    run.iter()
                        .map(|_| {
                            BaseOutcome::Unavailable(Unavailable {
                                message: message.clone(),
                            })
                        })
                        .collect()
                });
            for (i, r) in idx.into_iter().zip(results) {
                outcomes[i] = Some(r);
            }
        }
        for r in reqs {
            lock(&self.cancelled).remove(&r.request_id);
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every request has an outcome"))
            .collect()
    }

    fn run_admitted(&self, reqs: &[&BaseRequest], xs: &[Tensor], t0: Instant) -> Vec<BaseOutcome> {
        let deadlines: Vec<Option<Instant>> = reqs
            .iter()
            .map(|r| r.deadline_ms.map(|d| t0 + Duration::from_millis(d.max(0) as u64)))
            .collect();
        // Wait for a replica while any request in the batch may still be answered.
        let wait_until = if deadlines.iter().all(Option::is_some) {
            deadlines.iter().flatten().max().copied()
        } else {
            None
        };
        let waiting = GaugeGuard::new(&self.metrics.queue_depth);
        let Some(replica) = self.replicas.lease(wait_until) else {
            self.metrics
                .requests
                .with_label_values(&["deadline"])
                .inc_by(reqs.len() as u64);
            return reqs
                .iter()
                .map(|r| {
                    BaseOutcome::Deadline(DeadlineExceeded {
                        message: format!(
                            "request {} passed its deadline waiting {:.1} ms for a model replica",
                            r.request_id,
                            t0.elapsed().as_secs_f64() * 1e3
                        ),
                    })
                })
                .collect();
        };
        drop(waiting);
        let queue_ms = t0.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let _running = GaugeGuard::new(&self.metrics.in_flight);
        self.metrics.batch_size.observe(reqs.len() as f64);
        let x = if xs.len() == 1 {
            xs[0].shallow_clone()
        } else {
            Tensor::cat(xs, 0)
        }
        .to_device(self.device);
        let mut hooks = Serving {
            worker: self,
            reqs,
            acts: (0..reqs.len()).map(|_| Vec::new()).collect(),
            memory_acts: (0..reqs.len()).map(|_| None).collect(),
            deadlines,
            expired: vec![false; reqs.len()],
        };
        let walked = replica.ee.walk(&x, 0, &mut hooks);
        let compute_ms = started.elapsed().as_secs_f64() * 1e3;
        let Serving { acts, expired, .. } = hooks;
        walked
            .into_iter()
            .zip(acts)
            .zip(reqs)
            .zip(expired)
            .map(|(((w, acts), req), expired)| {
                let mut r = self.result(req, &w, acts, &replica.version, compute_ms);
                r.queue_ms = Some(thrift::OrderedFloat(queue_ms));
                r.deadline_passed = expired.then_some(true);
                let outcome = match (r.completed, r.exit_stage.is_some()) {
                    (false, _) if expired => "deadline",
                    (false, _) => "cancelled",
                    (true, true) => "inline_hit",
                    (true, false) => "completed",
                };
                self.metrics.requests.with_label_values(&[outcome]).inc();
                BaseOutcome::Result(r)
            })
            .collect()
    }

    /// One request's result from its walk; a complete run leaves its sample.
    fn result(&self, req: &BaseRequest, w: &Walked, acts: Vec<Tensor>, version: &str, compute_ms: f64) -> BaseResult {
        if let (Some(logits), None) = (&w.logits, &w.hit) {
            self.collect(acts, Some(logits), req.complete_on_hit);
        }
        let completed = w.stopped_at.is_none();
        BaseResult {
            request_id: req.request_id.clone(),
            completed,
            probs: w
                .probs()
                .filter(|_| completed)
                .map(|p| p.into_iter().map(|v| thrift::OrderedFloat(v as f64)).collect()),
            stages_run: w.stages_run as i32,
            compute_ms: thrift::OrderedFloat(compute_ms),
            exit_stage: w.hit.as_ref().map(|h| h.stage as i32),
            cache_ms: Some(thrift::OrderedFloat(w.cache_ms)),
            cache_version: w.hit.as_ref().map(|_| version.to_string()),
            queue_ms: None,
            deadline_passed: None,
            cache_kind: w.hit.as_ref().map(|h| {
                let kind = if h.cache.is_some() {
                    crate::frontend::LEARNED
                } else {
                    crate::frontend::MEMORY
                };
                kind.to_string()
            }),
        }
    }

    /// Keeps a run's sample for the trainer, if the buffer is free right now: a complete run with
    /// its logits, or an inline hit sampled to complete (without: the trainer completes it).
    fn collect(&self, acts: Vec<Tensor>, logits: Option<&Tensor>, uniform: bool) {
        let Some(ring) = &self.samples else { return };
        let sample = Collected {
            acts,
            logits: logits.map_or_else(Vec::new, |l| {
                Vec::<f32>::try_from(l.flatten(0, -1)).expect("f32 logits")
            }),
            uniform,
        };
        match ring.try_lock() {
            Ok(mut r) => {
                let evicted = r.push(sample);
                self.metrics.sample_bytes.set(r.bytes() as i64);
                drop(r);
                let kind = if uniform { "uniform" } else { "miss" };
                self.metrics.samples.with_label_values(&[kind]).inc();
                if evicted > 0 {
                    self.metrics
                        .samples_dropped
                        .with_label_values(&["evicted"])
                        .inc_by(evicted as u64);
                }
            }
            Err(_) => self.metrics.samples_dropped.with_label_values(&["busy"]).inc(),
        }
    }

    fn take_samples(&self, max: i32) -> SampleBatch {
        let taken = match &self.samples {
            Some(ring) => {
                let mut r = lock(ring);
                let t = r.take(max.max(0) as usize);
                self.metrics.sample_bytes.set(r.bytes() as i64);
                t
            }
            None => Vec::new(),
        };
        SampleBatch {
            stages: self.sample_stages.iter().map(|&s| s as i32).collect(),
            samples: taken.iter().map(Collected::to_wire).collect(),
            dropped: ["busy", "evicted"]
                .iter()
                .map(|r| self.metrics.samples_dropped.with_label_values(&[r]).get() as i64)
                .sum(),
        }
    }

    /// Installs a version in every replica. A replica in use finishes its request first, so no
    /// request sees a half-installed version; requests arriving meanwhile wait for the replica.
    fn install(&self, v: CacheVersion) -> thrift::Result<()> {
        let states = learning::version_from_wire(&v, &self.planned).map_err(ServingError::from)?;
        if !self.inline {
            return Ok(());
        }
        let _one = lock(&self.installing);
        for mut r in self.replicas.lease_all() {
            learning::install_all(&mut r.ee, &v.version, &states).map_err(ServingError::from)?;
            r.version = v.version.clone();
        }
        self.metrics.serving_version.set(learning::version_number(&v.version));
        Ok(())
    }

    /// Forgets the memory cache's entries; how many there were.
    fn clear_memory(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.clear())
    }

    fn serving_version(&self) -> String {
        self.replicas
            .lease(None)
            .map_or_else(String::new, |r| r.version.clone())
    }
}

/// What the base worker adds to the early-exit loop: cancellation, stage metrics, streaming to
/// cache workers (distributed), sample collection (online learning), the test-only panic.
struct Serving<'a> {
    worker: &'a BaseWorker,
    reqs: &'a [&'a BaseRequest],
    /// Per request: its activations at the sampled stages.
    acts: Vec<Vec<Tensor>>,
    /// Per request sampled to complete: its activation at the memory's stage, for an audit if
    /// the memory answers it.
    memory_acts: Vec<Option<Tensor>>,
    /// Per request: when it must be answered by, and whether it was stopped for passing that.
    deadlines: Vec<Option<Instant>>,
    expired: Vec<bool>,
}

impl Hooks for Serving<'_> {
    fn stop_before(&mut self, k: usize, rows: &[usize]) -> Vec<usize> {
        let w = self.worker;
        if k == 1 {
            if let Some(id) = &w.fault_panic_request {
                if rows.iter().any(|&r| &self.reqs[r].request_id == id) {
                    panic!("fault injection: request {id} panics at stage {k}");
                }
            }
        }
        let now = Instant::now();
        let mut stop = Vec::new();
        for &r in rows {
            if self.deadlines[r].is_some_and(|d| now >= d) {
                self.expired[r] = true;
                stop.push(r);
            } else if !self.reqs[r].complete_on_hit && w.is_cancelled(&self.reqs[r].request_id) {
                w.metrics.cancelled.inc();
                stop.push(r);
            }
        }
        stop
    }

    fn after_stage(&mut self, k: usize, h: &Tensor, rows: &[usize], took: Duration) {
        let w = self.worker;
        w.metrics
            .stage_seconds
            .with_label_values(&[w.stage_names[k].as_str()])
            .observe(took.as_secs_f64());
        w.metrics.stages_run.inc();
        if w.memory_auditor.is_some() && w.memory.as_ref().is_some_and(|m| m.spec.stage == k) {
            for (i, &r) in rows.iter().enumerate() {
                if self.reqs[r].complete_on_hit {
                    self.memory_acts[r] = Some(h.narrow(0, i as i64, 1));
                }
            }
        }
        let sampled = w.samples.is_some() && w.sample_stages.contains(&k);
        let link = w.links.get(&(k as i32));
        if !sampled && link.is_none() {
            return;
        }
        for (i, &r) in rows.iter().enumerate() {
            let act = h.narrow(0, i as i64, 1);
            if sampled {
                // The trainer's samples live in host memory, whatever device the model runs on.
                self.acts[r].push(act.to_device(tch::Device::Cpu));
            }
            let req = self.reqs[r];
            if let Some(link) = link.filter(|_| req.stream_stages.contains(&(k as i32))) {
                let o = Outgoing {
                    request_id: req.request_id.clone(),
                    stage: k as i32,
                    tensor: act,
                    selector: req.selector.clone(),
                };
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = link.queue.try_send(o) {
                    w.metrics.dropped.with_label_values(&[&link.addr]).inc();
                }
            }
        }
    }

    fn run_on_after_hit(&mut self, sample: usize, hit: &Hit) -> bool {
        // A hit sampled to complete is answered now all the same: the trainer (a learned
        // cache's hit) or the memory's auditor runs the rest of the model on its own cores.
        if let (None, Some(auditor), Some(act)) =
            (hit.cache, &self.worker.memory_auditor, self.memory_acts[sample].take())
        {
            auditor.audit(&act, hit.stage + 1, hit.class, hit.confidence);
        }
        if self.reqs[sample].complete_on_hit {
            self.worker.collect(std::mem::take(&mut self.acts[sample]), None, true);
        }
        false
    }
}

pub struct Handler(pub Arc<BaseWorker>);

impl BaseWorkerSyncHandler for Handler {
    fn handle_run(&self, request: BaseRequest) -> thrift::Result<BaseResult> {
        match self.0.run_batch(std::slice::from_ref(&request)).pop() {
            Some(o) => o.into_result(),
            None => Err(ServingError::Unavailable("no outcome".into()).into()),
        }
    }

    fn handle_run_batch(&self, requests: Vec<BaseRequest>) -> thrift::Result<Vec<BaseOutcome>> {
        Ok(self.0.run_batch(&requests))
    }

    fn handle_cancel(&self, request_id: String) -> thrift::Result<()> {
        let mut c = lock(&self.0.cancelled);
        // A cancel can arrive after its run ended; forget such entries after a while.
        if c.len() > 4096 {
            c.retain(|_, t| t.elapsed() < Duration::from_secs(30));
        }
        c.insert(request_id, Instant::now());
        Ok(())
    }

    fn handle_health(&self) -> thrift::Result<Health> {
        let workers = self
            .0
            .links
            .values()
            .map(|l| (l.addr.clone(), l.up.load(Ordering::Relaxed)))
            .collect();
        Ok(Health { ok: true, workers })
    }

    fn handle_take_samples(&self, max_samples: i32) -> thrift::Result<SampleBatch> {
        Ok(self.0.take_samples(max_samples))
    }

    fn handle_install(&self, version: CacheVersion) -> thrift::Result<()> {
        self.0.install(version)
    }

    fn handle_serving_version(&self) -> thrift::Result<String> {
        Ok(self.0.serving_version())
    }

    fn handle_clear_memory(&self) -> thrift::Result<i64> {
        Ok(self.0.clear_memory() as i64)
    }
}
