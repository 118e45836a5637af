//! The frontend: the public `Gati` service and the `Selector` the cache workers report to.
//!
//! Distributed mode, per request: register a reply channel under a fresh request id, start the
//! base run (which streams activations to the cache workers), then take the first message that
//! settles the request — a cache hit (answer now; cancel the base run unless this hit was sampled
//! to complete) or the base result. The channel is removed on every path.

use crate::config::{Cluster, ServeMode};
use crate::metrics::registered;
use crate::net::{self, user_err, Pool};
use anyhow::Result;
use crossbeam_channel::{bounded, Sender};
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use gati_rpc::convert::{input_to_tensor, tensor_to_wire};
use gati_rpc::*;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thrift::OrderedFloat;

type BaseClient = BaseWorkerSyncClient<net::In, net::Out>;
type CacheClient = CacheWorkerSyncClient<net::In, net::Out>;

enum Msg {
    Cache(CacheResult),
    Base(thrift::Result<BaseResult>),
}

struct Metrics {
    requests: IntCounterVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    latency: Histogram,
    in_flight: IntGauge,
    cancellations: IntCounter,
    agreement: IntCounterVec,
    late_reports: IntCounter,
    worker_up: IntGaugeVec,
    version_hits: IntCounterVec,
}

impl Metrics {
    fn new(r: &Registry) -> Result<Self> {
        let cv = |n: &str, h: &str, l: &[&str]| registered(r, IntCounterVec::new(Opts::new(n, h), l)?);
        let m = Self {
            requests: cv(
                "gati_requests_total",
                "Requests by outcome (hit, miss, error)",
                &["outcome"],
            )?,
            hits: cv(
                "gati_cache_hits_total",
                "Requests answered by the cache at a layer",
                &["layer"],
            )?,
            misses: cv(
                "gati_cache_misses_total",
                "Cache reports that were not confident",
                &["layer"],
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new("gati_request_latency_seconds", "End-to-end latency at the frontend")
                    .buckets(prometheus::exponential_buckets(0.0005, 1.5, 24)?),
            )?,
            in_flight: IntGauge::new("gati_in_flight", "Requests in progress")?,
            cancellations: IntCounter::new("gati_cancellations_total", "Base runs cancelled after a hit")?,
            agreement: cv(
                "gati_hit_agreement_total",
                "Sampled hits whose base run completed, by layer and agreement",
                &["layer", "agree"],
            )?,
            late_reports: IntCounter::new("gati_late_reports_total", "Cache reports after the request settled")?,
            version_hits: cv(
                "gati_cache_version_hits_total",
                "Requests answered by a cache, by the cache version that answered",
                &["version"],
            )?,
            worker_up: IntGaugeVec::new(
                Opts::new(
                    "gati_worker_up",
                    "1 while a worker answers health checks, 0 while it is down",
                ),
                &["worker"],
            )?,
        };
        r.register(Box::new(m.worker_up.clone()))?;
        r.register(Box::new(m.latency.clone()))?;
        r.register(Box::new(m.in_flight.clone()))?;
        r.register(Box::new(m.cancellations.clone()))?;
        r.register(Box::new(m.late_reports.clone()))?;
        Ok(m)
    }
}

pub struct Frontend {
    cluster: Cluster,
    plan: Plan,
    spec: gati_core::ModelSpec,
    classes: Vec<String>,
    selector_addr: String,
    base: Pool<BaseClient>,
    base_control: Pool<BaseClient>,
    caches: Vec<Pool<CacheClient>>,
    pending: Mutex<HashMap<String, Sender<Msg>>>,
    /// Sampled hits waiting for their complete base run: request id -> (layer, cache's class).
    sampled: Mutex<HashMap<String, (String, i32)>>,
    next_id: AtomicU64,
    metrics: Metrics,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: i64,
    hits: i64,
    misses: i64,
    errors: i64,
    hits_per_layer: BTreeMap<String, i64>,
}

impl Frontend {
    /// `selector_addr` is the Selector's actual address (it may have been bound to port 0).
    pub fn new(cluster: &Cluster, selector_addr: &str, registry: &Registry) -> Result<Self> {
        let plan = Plan::load(&cluster.plan)?;
        let spec = BaseModel::new(&plan.model, tch::Device::Cpu)?.spec().clone();
        let classes = if spec.num_classes == 10 {
            gati_core::data::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..spec.num_classes).map(|i| format!("class{i}")).collect()
        };
        let timeout = Some(Duration::from_millis(cluster.default_deadline_ms.max(1000) * 2));
        Ok(Self {
            base: Pool::new(
                &cluster.base.listen,
                timeout,
                cluster.token.clone(),
                BaseWorkerSyncClient::new,
            ),
            base_control: Pool::new(
                &cluster.base.listen,
                Some(Duration::from_secs(2)),
                cluster.token.clone(),
                BaseWorkerSyncClient::new,
            ),
            caches: cluster
                .caches
                .iter()
                .map(|c| {
                    Pool::new(
                        &c.endpoint.listen,
                        Some(Duration::from_secs(1)),
                        cluster.token.clone(),
                        CacheWorkerSyncClient::new,
                    )
                })
                .collect(),
            cluster: cluster.clone(),
            plan,
            spec,
            classes,
            selector_addr: selector_addr.to_string(),
            pending: Mutex::new(HashMap::new()),
            sampled: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics: Metrics::new(registry)?,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn infer(self: &Arc<Self>, req: InferRequest) -> thrift::Result<InferResponse> {
        let t0 = Instant::now();
        let in_flight = self.metrics.in_flight.get();
        if in_flight >= self.cluster.max_in_flight as i64 {
            self.count_error();
            return Err(user_err(Overloaded {
                message: format!("{in_flight} requests in flight; retry later"),
            }));
        }
        self.metrics.in_flight.inc();
        let r = self.infer_admitted(req, t0);
        self.metrics.in_flight.dec();
        self.metrics.latency.observe(t0.elapsed().as_secs_f64());
        if r.is_err() {
            self.count_error();
        }
        r
    }

    fn count_error(&self) {
        self.metrics.requests.with_label_values(&["error"]).inc();
        let mut c = self.counts.lock().expect("lock");
        c.requests += 1;
        c.errors += 1;
    }

    fn infer_admitted(self: &Arc<Self>, req: InferRequest, t0: Instant) -> thrift::Result<InferResponse> {
        if req.model != self.spec.name {
            return Err(user_err(ModelNotFound {
                message: format!(
                    "model '{}' is not served here (serving '{}')",
                    req.model, self.spec.name
                ),
            }));
        }
        let deadline_ms = match req.deadline_ms {
            Some(d) if d <= 0 => {
                return Err(user_err(DeadlineExceeded {
                    message: format!("deadline_ms {d} has already passed"),
                }))
            }
            Some(d) => d as u64,
            None => self.cluster.default_deadline_ms,
        };
        let deadline = t0 + Duration::from_millis(deadline_ms);
        let x = input_to_tensor(&req.input, &self.spec).map_err(user_err)?;
        let preprocess_ms = ms(t0);
        let id = req
            .request_id
            .clone()
            .unwrap_or_else(|| format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed)));
        let top_k = req.top_k.unwrap_or(5).clamp(1, self.spec.num_classes as i32) as usize;
        let distributed = self.cluster.mode == ServeMode::Distributed && !self.plan.caches.is_empty();
        let complete_on_hit = rand::thread_rng().gen::<f64>() < self.cluster.complete_on_hit_fraction;
        let base_req = BaseRequest {
            request_id: id.clone(),
            input: tensor_to_wire(&x),
            stream_stages: if distributed {
                self.plan.caches.iter().map(|c| c.stage as i32).collect()
            } else {
                vec![]
            },
            selector: self.selector_addr.clone(),
            complete_on_hit,
        };
        let settle = if distributed {
            self.race(&id, base_req, deadline, complete_on_hit)
        } else {
            match self.base.call(|c| c.run(base_req)) {
                Ok(r) => Ok(Msg::Base(Ok(r))),
                Err(e) => Err(base_error(e)),
            }
        }?;
        let mut timing = Timing {
            total_ms: OrderedFloat(0.0),
            queue_ms: OrderedFloat(0.0),
            preprocess_ms: OrderedFloat(preprocess_ms),
            base_ms: OrderedFloat(0.0),
            cache_ms: OrderedFloat(0.0),
        };
        let resp = match settle {
            Msg::Cache(r) => {
                timing.cache_ms = r.compute_ms;
                let layer = self.layer_name(r.stage);
                let score = self.score(r.class_index as usize, r.confidence.0);
                self.respond(id, vec![score], AnswerSource::CACHE, Some(layer), r.version, timing)
            }
            Msg::Base(r) => {
                let r = r.map_err(base_error)?;
                timing.base_ms = r.compute_ms;
                timing.cache_ms = r.cache_ms.unwrap_or(OrderedFloat(0.0));
                let probs: Vec<f64> = r.probs.unwrap_or_default().into_iter().map(|p| p.0).collect();
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                let scores = order.iter().take(top_k).map(|&c| self.score(c, probs[c])).collect();
                match r.exit_stage {
                    Some(s) => {
                        let layer = self.layer_name(s);
                        self.respond(id, scores, AnswerSource::CACHE, Some(layer), r.cache_version, timing)
                    }
                    None => self.respond(id, scores, AnswerSource::BASE, None, None, timing),
                }
            }
        };
        let mut resp = resp?;
        resp.timing.total_ms = OrderedFloat(ms(t0));
        Ok(resp)
    }

    /// Distributed mode: base run and cache reports race; the first settling message wins.
    fn race(
        self: &Arc<Self>,
        id: &str,
        base_req: BaseRequest,
        deadline: Instant,
        complete: bool,
    ) -> thrift::Result<Msg> {
        let (tx, rx) = bounded(64);
        self.pending.lock().expect("lock").insert(id.to_string(), tx.clone());
        let me = self.clone();
        std::thread::spawn(move || {
            let id = base_req.request_id.clone();
            let r = me.base.call(|c| c.run(base_req));
            match &r {
                Ok(res) => me.record_agreement(&id, res),
                Err(_) => {
                    me.sampled.lock().expect("lock").remove(&id);
                }
            }
            let _ = tx.send(Msg::Base(r));
        });
        let outcome = loop {
            match rx.recv_deadline(deadline) {
                Ok(Msg::Cache(r)) if r.hit => {
                    if complete {
                        let layer = self.layer_name(r.stage);
                        self.sampled
                            .lock()
                            .expect("lock")
                            .insert(id.to_string(), (layer, r.class_index));
                    } else {
                        self.cancel(id);
                    }
                    break Ok(Msg::Cache(r));
                }
                Ok(Msg::Cache(r)) => {
                    self.metrics
                        .misses
                        .with_label_values(&[&self.layer_name(r.stage)])
                        .inc();
                }
                Ok(Msg::Base(r)) => break Ok(Msg::Base(r)),
                Err(_) => {
                    self.cancel(id);
                    break Err(user_err(DeadlineExceeded {
                        message: format!("request {id} passed its deadline"),
                    }));
                }
            }
        };
        self.pending.lock().expect("lock").remove(id);
        outcome
    }

    fn cancel(&self, id: &str) {
        self.metrics.cancellations.inc();
        let id = id.to_string();
        if self.base_control.call(|c| c.cancel(id)).is_err() {
            self.base_control.reset();
        }
    }

    /// A sampled hit's base run finished: did the cache agree with the base model?
    fn record_agreement(&self, id: &str, r: &BaseResult) {
        let Some((layer, class)) = self.sampled.lock().expect("lock").remove(id) else {
            return;
        };
        if let Some(p) = &r.probs {
            let base = p.iter().enumerate().max_by(|a, b| a.1.cmp(b.1)).map(|(i, _)| i as i32);
            let agree = if base == Some(class) { "yes" } else { "no" };
            self.metrics.agreement.with_label_values(&[&layer, agree]).inc();
        }
    }

    fn report(&self, r: CacheResult) {
        let tx = self.pending.lock().expect("lock").get(&r.request_id).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.try_send(Msg::Cache(r));
            }
            None => self.metrics.late_reports.inc(),
        }
    }

    fn layer_name(&self, stage: i32) -> String {
        self.plan
            .caches
            .iter()
            .find(|c| c.stage as i32 == stage)
            .map_or_else(|| format!("stage{stage}"), |c| c.layer.clone())
    }

    fn score(&self, class: usize, p: f64) -> ClassScore {
        ClassScore {
            class_index: class as i32,
            class_name: self.classes.get(class).cloned().unwrap_or_default(),
            confidence: OrderedFloat(p),
        }
    }

    fn respond(
        &self,
        id: String,
        top_k: Vec<ClassScore>,
        source: AnswerSource,
        layer: Option<String>,
        version: Option<String>,
        timing: Timing,
    ) -> thrift::Result<InferResponse> {
        let Some(best) = top_k.first().cloned() else {
            return Err(user_err(Unavailable {
                message: "base worker returned no probabilities".into(),
            }));
        };
        let mut c = self.counts.lock().expect("lock");
        c.requests += 1;
        if source == AnswerSource::CACHE {
            let l = layer.clone().unwrap_or_default();
            self.metrics.requests.with_label_values(&["hit"]).inc();
            self.metrics.hits.with_label_values(&[&l]).inc();
            self.metrics
                .version_hits
                .with_label_values(&[version.as_deref().unwrap_or("?")])
                .inc();
            c.hits += 1;
            *c.hits_per_layer.entry(l).or_default() += 1;
        } else {
            self.metrics.requests.with_label_values(&["miss"]).inc();
            c.misses += 1;
        }
        Ok(InferResponse {
            request_id: id,
            class_index: best.class_index,
            class_name: best.class_name,
            confidence: best.confidence,
            top_k,
            source,
            cache_layer: layer,
            cache_version: version,
            timing,
        })
    }

    /// Checks every worker; a worker that fails is marked down and its pooled connections are
    /// dropped, so the next call reconnects (to the restarted process).
    fn health(&self) -> Health {
        let h = self.check_workers();
        for (w, up) in &h.workers {
            self.metrics.worker_up.with_label_values(&[w]).set(*up as i64);
        }
        h
    }

    fn check_workers(&self) -> Health {
        let mut workers = BTreeMap::new();
        let base_ok = self.base_control.call(|c| c.health()).is_ok();
        if !base_ok {
            self.base_control.reset();
        }
        workers.insert(self.base.addr().to_string(), base_ok);
        for p in &self.caches {
            let ok = p.call(|c| c.health()).is_ok();
            if !ok {
                p.reset();
            }
            workers.insert(p.addr().to_string(), ok);
        }
        Health { ok: base_ok, workers }
    }
}

/// Health-checks the workers twice a second for the `gati_worker_up` metric.
pub fn watch_workers(fe: Arc<Frontend>) {
    std::thread::spawn(move || loop {
        fe.health();
        std::thread::sleep(Duration::from_millis(500));
    });
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Errors of the base call: the base worker's own exceptions pass through; a transport failure
/// means it is unreachable.
fn base_error(e: thrift::Error) -> thrift::Error {
    match e {
        thrift::Error::User(u) => thrift::Error::User(u),
        other => user_err(Unavailable {
            message: format!("base worker unavailable: {other}"),
        }),
    }
}

pub struct GatiHandler(pub Arc<Frontend>);

impl GatiSyncHandler for GatiHandler {
    fn handle_infer(&self, request: InferRequest) -> thrift::Result<InferResponse> {
        self.0.infer(request)
    }

    fn handle_infer_batch(&self, requests: Vec<InferRequest>) -> thrift::Result<Vec<InferResponse>> {
        requests.into_iter().map(|r| self.0.infer(r)).collect()
    }

    fn handle_models(&self) -> thrift::Result<Vec<ModelInfo>> {
        let f = &self.0;
        let [c, h, w] = f.spec.input_shape;
        let mode = match f.cluster.mode {
            ServeMode::BaseOnly => "base-only",
            ServeMode::Inline => "inline",
            ServeMode::Distributed => "distributed",
        };
        Ok(vec![ModelInfo {
            name: f.spec.name.clone(),
            input_shape: vec![c, h, w],
            classes: f.classes.clone(),
            mode: mode.into(),
            cache_layers: if f.cluster.mode == ServeMode::BaseOnly {
                vec![]
            } else {
                f.plan.caches.iter().map(|c| c.layer.clone()).collect()
            },
            budget: OrderedFloat(f.plan.budget),
        }])
    }

    fn handle_health(&self) -> thrift::Result<Health> {
        Ok(self.0.health())
    }

    fn handle_stats(&self) -> thrift::Result<Stats> {
        let c = self.0.counts.lock().expect("lock");
        Ok(Stats {
            requests: c.requests,
            hits: c.hits,
            misses: c.misses,
            errors: c.errors,
            hits_per_layer: c.hits_per_layer.clone(),
            in_flight: self.0.metrics.in_flight.get(),
        })
    }
}

pub struct SelectorHandler(pub Arc<Frontend>);

impl SelectorSyncHandler for SelectorHandler {
    fn handle_report(&self, result: CacheResult) -> thrift::Result<()> {
        self.0.report(result);
        Ok(())
    }
}
