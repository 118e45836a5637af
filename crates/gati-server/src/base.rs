//! The base worker: runs the base model stage by stage. Distributed mode: after each planned
//! stage the activation is handed to a sender thread that streams it to the cache worker (the
//! model never waits for the network); between stages a cancelled request stops. Inline mode: the
//! plan's caches run here, between stages. With online learning on, every complete run leaves a
//! sample (the activations at the planned stages and the logits) in a bounded buffer that the
//! trainer drains; the request path only ever tries the buffer's lock.

use crate::config::{Cluster, ServeMode};
use crate::learning::{self, Collected, SampleRing, StartVersion};
use crate::metrics::registered;
use crate::net::{self, user_err, Pool};
use anyhow::Result;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use gati_cache::plan::Plan;
use gati_cache::runtime::{probs_row, EarlyExit};
use gati_core::BaseModel;
use gati_rpc::convert::{tensor_from_wire, tensor_to_wire};
use gati_rpc::*;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{BTreeMap, HashMap};
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
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl CacheLink {
    fn start(addr: &str, token: Option<net::Token>, dropped: IntCounterVec, sent: IntCounterVec) -> Self {
        let (tx, rx): (Sender<Outgoing>, Receiver<Outgoing>) = bounded(256);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pool: Pool<CacheClient> = Pool::new(addr, Some(Duration::from_secs(2)), token, CacheWorkerSyncClient::new);
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
                        u.store(true, std::sync::atomic::Ordering::Relaxed);
                        sent.with_label_values(&[&a]).inc();
                    }
                    Err(_) => {
                        // Down: the request degrades to the base model's answer for this layer.
                        u.store(false, std::sync::atomic::Ordering::Relaxed);
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
}

/// A model replica and the cache version it serves (inline mode).
struct Replica {
    ee: EarlyExit,
    version: String,
}

pub struct BaseWorker {
    replicas: (Sender<Replica>, Receiver<Replica>),
    n_replicas: usize,
    /// One install at a time (an install holds every replica).
    installing: Mutex<()>,
    planned: Vec<String>,
    /// Online learning: stages sampled (in plan order) and the buffer the trainer drains.
    sample_stages: Vec<usize>,
    samples: Option<Mutex<SampleRing>>,
    inline: bool,
    links: BTreeMap<i32, CacheLink>,
    cancelled: Mutex<HashMap<String, Instant>>,
    metrics: Metrics,
}

impl BaseWorker {
    pub fn new(cluster: &Cluster, registry: &Registry, replicas: usize) -> Result<Self> {
        let plan = Plan::load(&cluster.plan)?;
        let inline = cluster.mode == ServeMode::Inline;
        let mut serving = plan.clone();
        if !inline {
            serving.caches.clear();
        }
        let start = if inline {
            StartVersion::read(cluster)?
        } else {
            StartVersion::plan()
        };
        let (tx, rx) = bounded(replicas.max(1));
        for _ in 0..replicas.max(1) {
            let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
            let mut ee = EarlyExit::from_plan(&serving, model, &plan.caches_path(&cluster.plan))?;
            start.install(&mut ee)?;
            let version = start.name.clone();
            tx.send(Replica { ee, version }).expect("fresh channel");
        }
        let c = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("gati_base_stage_seconds", "Time of each base stage (batch 1)")
                .buckets(prometheus::exponential_buckets(1e-5, 1.6, 20)?),
            &["stage"],
        )?;
        registry.register(Box::new(stage_seconds.clone()))?;
        let g = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let metrics = Metrics {
            samples: c(
                "gati_online_samples_total",
                "Samples collected for online learning, by kind (uniform: sampled to complete; miss)",
                &["kind"],
            ),
            samples_dropped: c(
                "gati_online_samples_dropped_total",
                "Samples lost: buffer busy, or evicted unread because the buffer was full",
                &["reason"],
            ),
            sample_bytes: g("gati_online_buffer_bytes", "Memory held by collected samples")?,
            serving_version: g(
                "gati_serving_version",
                "Cache version served (inline caches; 0 is the plan)",
            )?,
            stage_seconds,
            queue_depth: IntGauge::new("gati_base_queue_depth", "Runs waiting for a model replica").expect("m"),
            requests: c("gati_base_requests_total", "Base runs by outcome", &["outcome"]),
            cancelled: IntCounter::new("gati_base_cancelled_total", "Runs stopped early by a cancel").expect("m"),
            stages_run: IntCounter::new("gati_base_stages_run_total", "Base stages executed").expect("m"),
            dropped: c(
                "gati_base_activations_dropped_total",
                "Activations not delivered",
                &["cache_worker"],
            ),
            in_flight: IntGauge::new("gati_base_in_flight", "Runs in progress").expect("m"),
        };
        let sent = c(
            "gati_base_activations_sent_total",
            "Activations streamed",
            &["cache_worker"],
        );
        registry.register(Box::new(metrics.cancelled.clone()))?;
        registry.register(Box::new(metrics.stages_run.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        let mut links = BTreeMap::new();
        if cluster.mode == ServeMode::Distributed {
            for pc in &plan.caches {
                if let Some(addr) = cluster.cache_for_layer(&pc.layer) {
                    links.insert(
                        pc.stage as i32,
                        CacheLink::start(addr, cluster.token.clone(), metrics.dropped.clone(), sent.clone()),
                    );
                }
            }
        }
        metrics.serving_version.set(learning::version_number(&start.name));
        Ok(Self {
            replicas: (tx, rx),
            n_replicas: replicas.max(1),
            installing: Mutex::new(()),
            planned: plan.caches.iter().map(|c| c.layer.clone()).collect(),
            sample_stages: plan.caches.iter().map(|c| c.stage).collect(),
            samples: cluster
                .trainer
                .as_ref()
                .map(|t| Mutex::new(SampleRing::new(t.buffer_mb))),
            inline,
            links,
            cancelled: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn is_cancelled(&self, id: &str) -> bool {
        self.cancelled.lock().expect("lock").contains_key(id)
    }

    fn run(&self, req: BaseRequest) -> thrift::Result<BaseResult> {
        let x = tensor_from_wire(&req.input).map_err(user_err)?;
        let t0 = Instant::now();
        let replica = self.replicas.1.recv().map_err(|_| {
            user_err(Unavailable {
                message: "no model replica".into(),
            })
        })?;
        self.metrics.in_flight.inc();
        let result = self.run_stages(&replica, &x, &req);
        self.metrics.in_flight.dec();
        self.replicas.0.send(replica).expect("replica pool");
        self.cancelled.lock().expect("lock").remove(&req.request_id);
        let mut r = result?;
        r.compute_ms = thrift::OrderedFloat(t0.elapsed().as_secs_f64() * 1e3);
        let outcome = match (r.completed, r.exit_stage.is_some()) {
            (false, _) => "cancelled",
            (true, true) => "inline_hit",
            (true, false) => "completed",
        };
        self.metrics.requests.with_label_values(&[outcome]).inc();
        Ok(r)
    }

    fn run_stages(&self, replica: &Replica, x: &Tensor, req: &BaseRequest) -> thrift::Result<BaseResult> {
        let _g = tch::no_grad_guard();
        let ee = &replica.ee;
        let m = &ee.model;
        let want = m.spec().input_shape;
        if x.size() != [1, want[0], want[1], want[2]] {
            return Err(user_err(InvalidInput {
                message: format!(
                    "input shape {:?}, expected [1, {}, {}, {}]",
                    x.size(),
                    want[0],
                    want[1],
                    want[2]
                ),
            }));
        }
        let mut h = x.shallow_clone();
        let mut cache_ms = 0.0;
        let mut acts = Vec::new();
        for k in 0..m.num_stages() {
            if !req.complete_on_hit && self.is_cancelled(&req.request_id) {
                self.metrics.cancelled.inc();
                return Ok(result(req, false, None, k, None, cache_ms));
            }
            let t = Instant::now();
            h = m.run_stage(k, &h);
            self.metrics
                .stage_seconds
                .with_label_values(&[m.stages()[k].name.as_str()])
                .observe(t.elapsed().as_secs_f64());
            self.metrics.stages_run.inc();
            if self.samples.is_some() && self.sample_stages.contains(&k) {
                acts.push(h.shallow_clone());
            }
            if self.inline {
                if let Some(c) = ee.cache_at(k) {
                    let t = Instant::now();
                    let (row, hit) = EarlyExit::consult(c, &h);
                    cache_ms += t.elapsed().as_secs_f64() * 1e3;
                    if hit.is_some() {
                        // A hit sampled to complete is answered now all the same: the trainer
                        // runs the rest of the model on its own cores.
                        if req.complete_on_hit {
                            self.collect(acts, None, true);
                        }
                        let mut r = result(req, true, Some(row), k + 1, Some(k as i32), cache_ms);
                        r.cache_version = Some(replica.version.clone());
                        return Ok(r);
                    }
                }
            } else if req.stream_stages.contains(&(k as i32)) {
                if let Some(link) = self.links.get(&(k as i32)) {
                    let o = Outgoing {
                        request_id: req.request_id.clone(),
                        stage: k as i32,
                        tensor: h.shallow_clone(),
                        selector: req.selector.clone(),
                    };
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = link.queue.try_send(o) {
                        self.metrics.dropped.with_label_values(&[&link.addr]).inc();
                    }
                }
            }
        }
        self.collect(acts, Some(&h), req.complete_on_hit);
        Ok(result(req, true, Some(probs_row(&h)), m.num_stages(), None, cache_ms))
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
                let mut r = ring.lock().expect("lock");
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
        let states = learning::version_from_wire(&v, &self.planned).map_err(user_err)?;
        if !self.inline {
            return Ok(());
        }
        let _one = self.installing.lock().expect("lock");
        let mut all: Vec<Replica> = (0..self.n_replicas)
            .map(|_| self.replicas.1.recv().expect("replica pool"))
            .collect();
        let mut outcome = Ok(());
        for r in &mut all {
            if let Err(e) = learning::install_all(&mut r.ee, &v.version, &states) {
                outcome = Err(user_err(e));
                break;
            }
            r.version = v.version.clone();
        }
        for r in all {
            self.replicas.0.send(r).expect("replica pool");
        }
        if outcome.is_ok() {
            self.metrics.serving_version.set(learning::version_number(&v.version));
        }
        outcome
    }

    fn serving_version(&self) -> String {
        let r = self.replicas.1.recv().expect("replica pool");
        let v = r.version.clone();
        self.replicas.0.send(r).expect("replica pool");
        v
    }
}

fn result(
    req: &BaseRequest,
    completed: bool,
    probs: Option<Vec<f32>>,
    stages: usize,
    exit: Option<i32>,
    cache_ms: f64,
) -> BaseResult {
    BaseResult {
        request_id: req.request_id.clone(),
        completed,
        probs: probs.map(|p| p.into_iter().map(|v| thrift::OrderedFloat(v as f64)).collect()),
        stages_run: stages as i32,
        compute_ms: thrift::OrderedFloat(0.0),
        exit_stage: exit,
        cache_ms: Some(thrift::OrderedFloat(cache_ms)),
        cache_version: None,
    }
}

pub struct Handler(pub Arc<BaseWorker>);

impl BaseWorkerSyncHandler for Handler {
    fn handle_run(&self, request: BaseRequest) -> thrift::Result<BaseResult> {
        self.0.run(request)
    }

    fn handle_cancel(&self, request_id: String) -> thrift::Result<()> {
        let mut c = self.0.cancelled.lock().expect("lock");
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
            .map(|l| (l.addr.clone(), l.up.load(std::sync::atomic::Ordering::Relaxed)))
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
}
