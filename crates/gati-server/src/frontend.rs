//! The frontend: the public `Gati` service and the `Selector` the cache workers report to.
//!
//! Distributed mode, per request: register a reply channel under a fresh request id, start the
//! base run (which streams activations to the cache workers), then take the first message that
//! settles the request — a cache hit (answer now; cancel the base run unless this hit was sampled
//! to complete) or the base result. The channel is removed on every path.

use crate::base_link::BaseLink;
use crate::config::{Cluster, ServeMode};
use crate::errors::{to_thrift, ServingError};
use crate::exact::{self, ExactCache};
use crate::front_memory::FrontMemory;
use crate::metrics::registered;
use crate::net::{self, Pool};
use crate::resources::{lock, panic_message, Permits};
use anyhow::Result;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use gati_cache::plan::Plan;
use gati_core::BaseModel;
use gati_rpc::convert::{input_to_tensor, tensor_to_wire};
use gati_rpc::*;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;
use thrift::OrderedFloat;

type CacheClient = CacheWorkerSyncClient<net::In, net::Out>;

enum Msg {
    Cache(CacheResult),
    Base(Result<BaseResult, ServingError>),
}

struct Metrics {
    requests: IntCounterVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    cancellations: IntCounter,
    agreement: IntCounterVec,
    late_reports: IntCounter,
    worker_up: IntGaugeVec,
    version_hits: IntCounterVec,
    exact: IntCounterVec,
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
            latency: registered(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gati_request_latency_seconds",
                        "End-to-end latency at the frontend, by outcome (hit, miss, error)",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 1.5, 24)?),
                    &["outcome"],
                )?,
            )?,
            in_flight: registered(r, IntGauge::new("gati_in_flight", "Requests in progress")?)?,
            cancellations: registered(
                r,
                IntCounter::new("gati_cancellations_total", "Base runs cancelled after a hit")?,
            )?,
            agreement: cv(
                "gati_hit_agreement_total",
                "Sampled hits whose base run completed, by layer and agreement",
                &["layer", "agree"],
            )?,
            late_reports: registered(
                r,
                IntCounter::new("gati_late_reports_total", "Cache reports after the request settled")?,
            )?,
            exact: cv(
                "gati_exact_cache_events_total",
                "Exact-repeat answers at the frontend: lookups, hits, inserts, evictions",
                &["event"],
            )?,
            version_hits: cv(
                "gati_cache_version_hits_total",
                "Requests answered by a cache, by the cache version that answered",
                &["version"],
            )?,
            worker_up: registered(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "gati_worker_up",
                        "1 while a worker answers health checks, 0 while it is down",
                    ),
                    &["worker"],
                )?,
            )?,
        };
        // Every labelled series exists from the start, so dashboards and rules see zeros, not gaps.
        for e in ["lookup", "hit", "insert", "eviction"] {
            m.exact.with_label_values(&[e]);
        }
        for o in ["hit", "miss", "error"] {
            m.requests.with_label_values(&[o]);
            m.latency.with_label_values(&[o]);
        }
        Ok(m)
    }
}

pub struct Frontend {
    cluster: Cluster,
    plan: Plan,
    spec: gati_core::ModelSpec,
    classes: Vec<String>,
    selector_addr: String,
    base: Arc<BaseLink>,
    caches: Vec<Pool<CacheClient>>,
    /// Answers to exact repeats (None: off).
    exact: Option<ExactCache>,
    /// The plan's memory cache, when the frontend holds it (inline mode).
    memory: Option<FrontMemory>,
    /// The cache worker holding the plan's memory cache (distributed mode), told each answer.
    memory_worker: Option<usize>,
    /// Distributed mode: the stages whose activations a base run streams to cache workers (the
    /// plan's cache layers, learned and memory); empty otherwise.
    stream_stages: Vec<i32>,
    pending: Mutex<HashMap<String, Sender<Msg>>>,
    /// Requests admitted at once (`max_in_flight`); the gauge `gati_in_flight` mirrors it.
    admitted: Permits,
    /// Groups concurrent requests into batched base runs (inline and base-only; None: batch 1).
    batcher: Option<Batcher>,
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
    /// `selector_addr` is the Selector's actual address (it may have been bound to port 0);
    /// `base` is how the base worker is reached (`BaseLink::local` when it runs in this process).
    pub fn new(cluster: &Cluster, selector_addr: &str, registry: &Registry, base: BaseLink) -> Result<Self> {
        let plan = Plan::load(&cluster.plan)?;
        cluster.check_layers(&plan)?;
        let spec = BaseModel::new(&plan.model, tch::Device::Cpu)?.spec().clone();
        let classes = spec.class_names();
        let base = Arc::new(base);
        let metrics = Metrics::new(registry)?;
        let memory = if cluster.memory_at_frontend(&plan) {
            FrontMemory::new(&plan, metrics.agreement.clone(), cluster.complete_on_hit_fraction > 0.0)?
        } else {
            None
        };
        if let Some(m) = &memory {
            registry.register(Box::new(crate::metrics::MemoryCollector::new(m.cache.clone())?))?;
        }
        let batcher = (cluster.max_batch > 1 && cluster.mode != ServeMode::Distributed).then(|| {
            Batcher::start(
                base.clone(),
                cluster.max_batch,
                Duration::from_micros((cluster.max_batch_delay_ms * 1e3) as u64),
            )
        });
        Ok(Self {
            admitted: Permits::new(cluster.max_in_flight, metrics.in_flight.clone()),
            batcher,
            base,
            caches: cluster
                .caches
                .iter()
                .map(|c| {
                    Pool::new(
                        c.endpoint.address(),
                        Some(Duration::from_secs(1)),
                        cluster.credentials(),
                        CacheWorkerSyncClient::new,
                    )
                })
                .collect(),
            exact: std::num::NonZeroUsize::new(cluster.exact_entries(&plan)).map(ExactCache::new),
            memory,
            memory_worker: plan
                .memory
                .as_ref()
                .filter(|_| cluster.mode == ServeMode::Distributed)
                .and_then(|m| cluster.caches.iter().position(|c| c.layers.contains(&m.spec.layer))),
            stream_stages: match cluster.mode {
                ServeMode::Distributed => plan.cache_layers().iter().map(|(s, _)| *s as i32).collect(),
                _ => Vec::new(),
            },
            cluster: cluster.clone(),
            plan,
            spec,
            classes,
            selector_addr: selector_addr.to_string(),
            pending: Mutex::new(HashMap::new()),
            sampled: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// One request, admitted under the in-flight limit; a panic while serving it (a bug) is its
    /// `Unavailable`, and its permit is returned either way.
    fn infer(self: &Arc<Self>, req: InferRequest) -> Result<InferResponse, ServingError> {
        let t0 = Instant::now();
        let id = req.request_id.clone();
        let _permit = self.admit().inspect_err(|e| failed(id.as_deref(), e))?;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let key = self.exact.as_ref().map(|_| exact::key(&req));
            let p = self.prepare(req, t0)?;
            if let Some(r) = key.as_ref().and_then(|k| self.repeat(k, &p)) {
                return r;
            }
            let memory_key = self.memory.as_ref().map(|m| m.key(&p.input));
            if let Some(r) = memory_key.as_ref().and_then(|k| self.recall(k, &p)) {
                return r;
            }
            let settled = self.settle(&p)?;
            if let (Some(m), Some(k), Some(probs)) = (&self.memory, &memory_key, self.to_remember(&settled)) {
                m.remember(k, probs);
            }
            // The base worker stops between stages at the deadline, but a run can finish just in
            // time there and still reach here late: the client has given up by then. Checked
            // before the response is built, so a late request counts as an error only.
            let late = Instant::now().saturating_duration_since(p.deadline);
            if !late.is_zero() {
                return Err(ServingError::DeadlineExceeded(format!(
                    "request {} was answered {:.1} ms after its deadline",
                    p.base_req.request_id,
                    late.as_secs_f64() * 1e3
                )));
            }
            let r = self.answer(p, settled)?;
            if let (Some(c), Some(k)) = (&self.exact, key) {
                self.metrics.exact.with_label_values(&["insert"]).inc();
                if c.put(k, &r) {
                    self.metrics.exact.with_label_values(&["eviction"]).inc();
                }
            }
            Ok(r)
        }))
        .unwrap_or_else(|e| Err(internal_error(&*e)));
        self.finish(&r, t0, id.as_deref());
        r
    }

    /// The answer an earlier request with the same input got, as this request's.
    fn repeat(&self, key: &exact::Key, p: &Prepared) -> Option<Result<InferResponse, ServingError>> {
        let c = self.exact.as_ref()?;
        self.metrics.exact.with_label_values(&["lookup"]).inc();
        let stored = c.get(key, p.top_k)?;
        self.metrics.exact.with_label_values(&["hit"]).inc();
        let timing = Timing {
            total_ms: OrderedFloat(ms(p.t0)),
            queue_ms: OrderedFloat(0.0),
            preprocess_ms: OrderedFloat(p.preprocess_ms),
            base_ms: OrderedFloat(0.0),
            cache_ms: OrderedFloat(0.0),
        };
        let hit = CacheHit {
            layer: EXACT_LAYER.into(),
            version: None,
            kind: EXACT.into(),
        };
        Some(self.respond(p.base_req.request_id.clone(), stored.top_k, Some(hit), timing))
    }

    /// The answer the frontend's memory holds for a near-duplicate of this request's input.
    fn recall(&self, key: &Tensor, p: &Prepared) -> Option<Result<InferResponse, ServingError>> {
        let t = Instant::now();
        let memory = self.memory.as_ref()?;
        let (probs, class, confidence) = memory.recall(key)?;
        if p.complete_on_hit {
            memory.audit(&p.input, class, confidence);
        }
        let timing = Timing {
            total_ms: OrderedFloat(ms(p.t0)),
            queue_ms: OrderedFloat(0.0),
            preprocess_ms: OrderedFloat(p.preprocess_ms),
            base_ms: OrderedFloat(0.0),
            cache_ms: OrderedFloat(ms(t)),
        };
        let probs: Vec<OrderedFloat<f64>> = probs.into_iter().map(|v| OrderedFloat(v as f64)).collect();
        let hit = self.cache_hit(-1, Some(MEMORY.into()), None);
        Some(self.respond(
            p.base_req.request_id.clone(),
            self.top_scores(&probs, p.top_k),
            Some(hit),
            timing,
        ))
    }

    /// The softmax row a settled request leaves in the frontend's memory: the base model's
    /// answer, and a learned cache's where the plan remembers those.
    fn to_remember(&self, settled: &Msg) -> Option<Vec<f32>> {
        let Msg::Base(Ok(r)) = settled else { return None };
        let remember_hits = self.plan.memory.as_ref().is_some_and(|m| m.spec.remember_cache_hits);
        if !r.completed || (r.exit_stage.is_some() && !remember_hits) {
            return None;
        }
        Some(r.probs.as_ref()?.iter().map(|v| v.0 as f32).collect())
    }

    /// Forgets the exact-repeat answers and the frontend's memory; how many entries there were.
    fn clear_exact(&self) -> usize {
        self.exact.as_ref().map_or(0, ExactCache::clear) + self.memory.as_ref().map_or(0, |m| m.cache.clear())
    }

    /// Many requests as one batched base run (inline and base-only; distributed: one by one),
    /// admitted as one unit of the in-flight limit. One outcome per request, in order: a bad item
    /// fails alone, unless `all_or_nothing`, where the first item that fails its checks fails the
    /// whole call (naming it) before anything runs.
    fn infer_many(
        self: &Arc<Self>,
        reqs: Vec<InferRequest>,
        all_or_nothing: bool,
    ) -> Result<Vec<Result<InferResponse, ServingError>>, ServingError> {
        let t0 = Instant::now();
        let ids: Vec<Option<String>> = reqs.iter().map(|r| r.request_id.clone()).collect();
        let _permit = self.admit().inspect_err(|e| failed(Some("(batch)"), e))?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let prepared: Vec<Result<Prepared, ServingError>> = reqs.into_iter().map(|r| self.prepare(r, t0)).collect();
            if all_or_nothing {
                if let Some((i, e)) = prepared
                    .iter()
                    .enumerate()
                    .find_map(|(i, p)| Some((i, p.as_ref().err()?)))
                {
                    return Err(at_item(i, e.clone()));
                }
            }
            let ok: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
            let mut settled = if self.distributed() {
                ok.iter().map(|p| self.settle(p)).collect::<Vec<_>>().into_iter()
            } else {
                // The batch runs while its items' deadlines allow; one already past fails alone.
                let reqs: Vec<Result<BaseRequest, ServingError>> = ok.iter().map(|p| p.base_request()).collect();
                let mut ran = self
                    .run_base(reqs.iter().filter_map(|r| r.as_ref().ok().cloned()).collect())
                    .into_iter();
                reqs.into_iter()
                    .map(|r| r.and_then(|_| ran.next().expect("one outcome per request")))
                    .collect::<Vec<_>>()
                    .into_iter()
            };
            Ok(prepared
                .into_iter()
                .map(|p| {
                    let p = p?;
                    let s = settled.next().expect("one outcome per prepared request")?;
                    self.answer(p, s)
                })
                .collect::<Vec<_>>())
        }))
        .unwrap_or_else(|e| Err(internal_error(&*e)));
        match &out {
            Ok(items) => items
                .iter()
                .zip(&ids)
                .for_each(|(r, id)| self.finish(r, t0, id.as_deref())),
            Err(e) => self.finish(&Err(e.clone()), t0, Some("(batch)")),
        }
        out
    }

    fn admit(&self) -> Result<crate::resources::Permit, ServingError> {
        self.admitted.try_acquire().ok_or_else(|| {
            self.count_error();
            self.overloaded()
        })
    }

    fn overloaded(&self) -> ServingError {
        ServingError::Overloaded(format!(
            "{} requests in flight (max_in_flight {}); retry later",
            self.admitted.in_use(),
            self.admitted.max()
        ))
    }

    /// Counts an answered request, and logs it if it failed (`id`: the client's request id).
    fn finish(&self, r: &Result<InferResponse, ServingError>, t0: Instant, id: Option<&str>) {
        let outcome = match r {
            Ok(a) if a.source == AnswerSource::CACHE => "hit",
            Ok(_) => "miss",
            Err(e) => {
                failed(id, e);
                self.count_error();
                "error"
            }
        };
        self.metrics
            .latency
            .with_label_values(&[outcome])
            .observe(t0.elapsed().as_secs_f64());
    }

    fn count_error(&self) {
        self.metrics.requests.with_label_values(&["error"]).inc();
        let mut c = lock(&self.counts);
        c.requests += 1;
        c.errors += 1;
    }

    fn distributed(&self) -> bool {
        !self.stream_stages.is_empty()
    }

    /// Checks a request and turns it into the base worker's request.
    fn prepare(&self, req: InferRequest, t0: Instant) -> Result<Prepared, ServingError> {
        if req.model != self.spec.name {
            return Err(ServingError::ModelNotFound(format!(
                "model '{}' is not served here (serving '{}')",
                req.model, self.spec.name
            )));
        }
        let deadline_ms = match req.deadline_ms {
            Some(d) if d <= 0 => {
                return Err(ServingError::DeadlineExceeded(format!(
                    "deadline_ms {d} has already passed"
                )))
            }
            Some(d) => d as u64,
            None => self.cluster.default_deadline_ms,
        };
        let x = input_to_tensor(&req.input, &self.spec).map_err(ServingError::from)?;
        let id = req
            .request_id
            .clone()
            .unwrap_or_else(|| format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed)));
        let complete_on_hit = rand::thread_rng().gen::<f64>() < self.cluster.complete_on_hit_fraction;
        Ok(Prepared {
            t0,
            input: x.shallow_clone(),
            deadline: t0 + Duration::from_millis(deadline_ms),
            preprocess_ms: ms(t0),
            top_k: self.top_k(req.top_k)?,
            complete_on_hit,
            base_req: BaseRequest {
                request_id: id,
                input: tensor_to_wire(&x),
                stream_stages: self.stream_stages.clone(),
                selector: self.selector_addr.clone(),
                complete_on_hit,
                deadline_ms: None,
            },
        })
    }

    /// The number of classes a response lists: 1 to the model's class count (default 5, or all
    /// when the model has fewer).
    fn top_k(&self, asked: Option<i32>) -> Result<usize, ServingError> {
        let classes = self.spec.num_classes as i32;
        match asked {
            None => Ok(5.min(classes) as usize),
            Some(k) if (1..=classes).contains(&k) => Ok(k as usize),
            Some(k) => Err(ServingError::InvalidInput(format!(
                "top_k {k} is out of range: 1 to {classes} (the model's classes)"
            ))),
        }
    }

    /// Waits for what settles one request: the first cache hit or the base result.
    fn settle(self: &Arc<Self>, p: &Prepared) -> Result<Msg, ServingError> {
        let base_req = p.base_request()?;
        if self.distributed() {
            return self.race(&base_req.request_id.clone(), base_req, p.deadline, p.complete_on_hit);
        }
        self.run_base(vec![base_req]).pop().expect("one outcome")
    }

    /// Base runs, through the batcher when there is one; one outcome per request.
    fn run_base(&self, reqs: Vec<BaseRequest>) -> Vec<Result<Msg, ServingError>> {
        let n = reqs.len();
        let outcomes = match (&self.batcher, n) {
            (_, 0) => return Vec::new(),
            (Some(b), 1) => b.run(reqs.into_iter().next().expect("one")).map(|o| vec![o]),
            (None, 1) => self
                .base
                .run(reqs.into_iter().next().expect("one"))
                .map(|r| vec![BaseOutcome::Result(r)])
                .map_err(base_error),
            _ => one_per_request(self.base.run_batch(reqs), n),
        };
        match outcomes {
            Ok(v) => v
                .into_iter()
                .map(|o| Ok(Msg::Base(o.into_result().map_err(base_error))))
                .collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// The response for a settled request.
    fn answer(&self, p: Prepared, settled: Msg) -> Result<InferResponse, ServingError> {
        let mut timing = Timing {
            total_ms: OrderedFloat(0.0),
            queue_ms: OrderedFloat(0.0),
            preprocess_ms: OrderedFloat(p.preprocess_ms),
            base_ms: OrderedFloat(0.0),
            cache_ms: OrderedFloat(0.0),
        };
        let id = p.base_req.request_id;
        let resp = match settled {
            Msg::Cache(r) => {
                timing.cache_ms = r.compute_ms;
                let scores = match &r.probs {
                    Some(probs) => self.top_scores(probs, p.top_k),
                    None => vec![self.score(r.class_index as usize, r.confidence.0)],
                };
                let hit = self.cache_hit(r.stage, r.cache_kind, r.version);
                self.respond(id, scores, Some(hit), timing)
            }
            Msg::Base(r) => {
                let r = r?;
                if r.deadline_passed == Some(true) {
                    return Err(ServingError::DeadlineExceeded(format!(
                        "request {id} passed its deadline after {} of {} stages",
                        r.stages_run,
                        self.plan.stage_ms.len()
                    )));
                }
                timing.queue_ms = r.queue_ms.unwrap_or(OrderedFloat(0.0));
                timing.base_ms = r.compute_ms;
                timing.cache_ms = r.cache_ms.unwrap_or(OrderedFloat(0.0));
                let scores = self.top_scores(&r.probs.unwrap_or_default(), p.top_k);
                match r.exit_stage {
                    Some(s) => {
                        let hit = self.cache_hit(s, r.cache_kind, r.cache_version);
                        self.respond(id, scores, Some(hit), timing)
                    }
                    None => self.respond(id, scores, None, timing),
                }
            }
        };
        let mut resp = resp?;
        resp.timing.total_ms = OrderedFloat(ms(p.t0));
        Ok(resp)
    }

    /// Distributed mode: base run and cache reports race; the first settling message wins.
    fn race(
        self: &Arc<Self>,
        id: &str,
        base_req: BaseRequest,
        deadline: Instant,
        complete: bool,
    ) -> Result<Msg, ServingError> {
        let (tx, rx) = bounded(64);
        lock(&self.pending).insert(id.to_string(), tx.clone());
        let me = self.clone();
        std::thread::spawn(move || {
            let id = base_req.request_id.clone();
            let r = me.base.run(base_req);
            let answer = match &r {
                Ok(res) => {
                    me.record_agreement(&id, res);
                    res.probs.clone().filter(|_| res.completed)
                }
                Err(_) => {
                    lock(&me.sampled).remove(&id);
                    None
                }
            };
            let _ = tx.send(Msg::Base(r.map_err(base_error)));
            // After the answer is on its way: the memory learns the base model's answer.
            if let Some(probs) = answer {
                me.remember(&id, probs);
            }
        });
        let outcome = loop {
            match rx.recv_deadline(deadline) {
                Ok(Msg::Cache(r)) if r.hit => {
                    let hit = self.cache_hit(r.stage, r.cache_kind.clone(), None);
                    if complete {
                        lock(&self.sampled).insert(id.to_string(), (hit.label(), r.class_index));
                    } else {
                        self.cancel(id);
                    }
                    // A cache model's hit is remembered for its repeats where the plan says so.
                    let remember = self.plan.memory.as_ref().is_some_and(|m| m.spec.remember_cache_hits);
                    if let Some(probs) = r.probs.clone().filter(|_| remember && hit.kind != MEMORY) {
                        self.remember(id, probs);
                    }
                    break Ok(Msg::Cache(r));
                }
                Ok(Msg::Cache(r)) => {
                    let hit = self.cache_hit(r.stage, r.cache_kind, None);
                    self.metrics.misses.with_label_values(&[&hit.label()]).inc();
                }
                Ok(Msg::Base(r)) => break Ok(Msg::Base(r)),
                Err(_) => {
                    self.cancel(id);
                    break Err(ServingError::DeadlineExceeded(format!(
                        "request {id} passed its deadline"
                    )));
                }
            }
        };
        lock(&self.pending).remove(id);
        outcome
    }

    fn cancel(&self, id: &str) {
        self.metrics.cancellations.inc();
        self.base.cancel(id.to_string());
    }

    /// A sampled hit's base run finished: did the cache agree with the base model?
    fn record_agreement(&self, id: &str, r: &BaseResult) {
        let Some((layer, class)) = lock(&self.sampled).remove(id) else {
            return;
        };
        if let Some(p) = &r.probs {
            let base = p.iter().enumerate().max_by(|a, b| a.1.cmp(b.1)).map(|(i, _)| i as i32);
            crate::metrics::count_agreement(&self.metrics.agreement, &layer, base == Some(class));
        }
    }

    fn report(&self, r: CacheResult) {
        let tx = lock(&self.pending).get(&r.request_id).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.try_send(Msg::Cache(r));
            }
            None => self.metrics.late_reports.inc(),
        }
    }

    /// Which cache answered at `stage`: `kind` is a reply's `cache_kind` (None: learned).
    fn cache_hit(&self, stage: i32, kind: Option<String>, version: Option<String>) -> CacheHit {
        let kind = kind.unwrap_or_else(|| LEARNED.into());
        let layer = match (kind.as_str(), &self.plan.memory) {
            (MEMORY, Some(m)) => m.spec.layer.clone(),
            _ => self.layer_name(stage),
        };
        CacheHit { layer, version, kind }
    }

    /// Tells the memory cache worker a request's answer (oneway; lost when it is down, which
    /// only costs that repeat's hit).
    fn remember(&self, id: &str, probs: Vec<OrderedFloat<f64>>) {
        let Some(pool) = self.memory_worker.map(|i| &self.caches[i]) else {
            return;
        };
        let answer = FinalAnswer {
            request_id: id.to_string(),
            probs,
        };
        if pool.call(|c| c.remember(answer)).is_err() {
            pool.reset();
        }
    }

    fn layer_name(&self, stage: i32) -> String {
        self.plan
            .caches
            .iter()
            .find(|c| c.stage as i32 == stage)
            .map_or_else(|| format!("stage{stage}"), |c| c.layer.clone())
    }

    /// The `k` most probable classes of a softmax row, best first.
    fn top_scores(&self, probs: &[OrderedFloat<f64>], k: usize) -> Vec<ClassScore> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].0.total_cmp(&probs[a].0));
        order.iter().take(k).map(|&c| self.score(c, probs[c].0)).collect()
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
        hit: Option<CacheHit>,
        timing: Timing,
    ) -> Result<InferResponse, ServingError> {
        let Some(best) = top_k.first().cloned() else {
            return Err(ServingError::Unavailable(
                "base worker returned no probabilities".into(),
            ));
        };
        let mut c = lock(&self.counts);
        c.requests += 1;
        match &hit {
            Some(h) => {
                let l = h.label();
                self.metrics.requests.with_label_values(&["hit"]).inc();
                self.metrics.hits.with_label_values(&[&l]).inc();
                if h.kind == LEARNED {
                    self.metrics
                        .version_hits
                        .with_label_values(&[h.version.as_deref().unwrap_or("?")])
                        .inc();
                }
                c.hits += 1;
                *c.hits_per_layer.entry(l).or_default() += 1;
            }
            None => {
                self.metrics.requests.with_label_values(&["miss"]).inc();
                c.misses += 1;
            }
        }
        let source = if hit.is_some() {
            AnswerSource::CACHE
        } else {
            AnswerSource::BASE
        };
        let (cache_layer, cache_version, cache_kind) = match hit {
            Some(h) => (Some(h.layer), h.version, Some(h.kind)),
            None => (None, None, None),
        };
        Ok(InferResponse {
            request_id: id,
            class_index: best.class_index,
            class_name: best.class_name,
            confidence: best.confidence,
            top_k,
            source,
            cache_layer,
            cache_version,
            timing,
            cache_kind,
        })
    }

    /// Ready for traffic: the base worker answers (cache workers are optional: a dead one only
    /// costs its hits).
    pub fn is_ready(&self) -> bool {
        self.health().ok
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
        let base_ok = self.base.healthy();
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

/// Errors of a base worker call: its own exceptions keep their kind and message; anything else
/// (a transport or protocol failure) means it is unreachable.
fn base_error(e: thrift::Error) -> ServingError {
    if let thrift::Error::User(u) = &e {
        if let Some(x) = u.downcast_ref::<InvalidInput>() {
            return ServingError::InvalidInput(x.message.clone());
        }
        if let Some(x) = u.downcast_ref::<Unavailable>() {
            return ServingError::Unavailable(x.message.clone());
        }
        if let Some(x) = u.downcast_ref::<DeadlineExceeded>() {
            return ServingError::DeadlineExceeded(x.message.clone());
        }
    }
    ServingError::Unavailable(format!("base worker unavailable: {e}"))
}

/// A batched base call's outcomes, one per request, or the error each request gets.
fn one_per_request(r: thrift::Result<Vec<BaseOutcome>>, n: usize) -> Result<Vec<BaseOutcome>, ServingError> {
    match r {
        Ok(v) if v.len() == n => Ok(v),
        Ok(v) => Err(ServingError::Unavailable(format!(
            "base worker answered {} outcomes for {n} requests",
            v.len()
        ))),
        Err(e) => Err(base_error(e)),
    }
}

/// A checked request on its way to the base worker.
struct Prepared {
    t0: Instant,
    /// The preprocessed input, `[1, C, H, W]`.
    input: Tensor,
    deadline: Instant,
    preprocess_ms: f64,
    top_k: usize,
    complete_on_hit: bool,
    base_req: BaseRequest,
}

impl Prepared {
    /// The base worker's request, carrying the time this request has left.
    fn base_request(&self) -> Result<BaseRequest, ServingError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ServingError::DeadlineExceeded(format!(
                "request {} passed its deadline before the base model started",
                self.base_req.request_id
            )));
        }
        Ok(BaseRequest {
            deadline_ms: Some(left.as_millis().max(1) as i64),
            ..self.base_req.clone()
        })
    }
}

type BaseReply = Sender<Result<BaseOutcome, ServingError>>;

/// The frontend's dynamic batcher: concurrent single requests wait up to `max_delay` after the
/// first for up to `max_batch - 1` more, then run as one batched base run. Two dispatchers, so
/// one fills the next batch while the other's runs.
struct Batcher {
    queue: Sender<(BaseRequest, BaseReply)>,
}

impl Batcher {
    fn start(base: Arc<BaseLink>, max_batch: usize, max_delay: Duration) -> Self {
        let (tx, rx) = unbounded();
        for _ in 0..2 {
            let (rx, base): (Receiver<(BaseRequest, BaseReply)>, _) = (rx.clone(), base.clone());
            std::thread::spawn(move || {
                while let Ok(first) = rx.recv() {
                    let until = Instant::now() + max_delay;
                    let mut items = vec![first];
                    while items.len() < max_batch {
                        match rx.recv_deadline(until) {
                            Ok(i) => items.push(i),
                            Err(_) => break,
                        }
                    }
                    let (reqs, replies): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                    match one_per_request(base.run_batch(reqs), replies.len()) {
                        Ok(outcomes) => {
                            for (o, tx) in outcomes.into_iter().zip(replies) {
                                let _ = tx.send(Ok(o));
                            }
                        }
                        Err(e) => {
                            for tx in replies {
                                let _ = tx.send(Err(e.clone()));
                            }
                        }
                    }
                }
            });
        }
        Self { queue: tx }
    }

    fn run(&self, req: BaseRequest) -> Result<BaseOutcome, ServingError> {
        let (tx, rx) = bounded(1);
        self.queue
            .send((req, tx))
            .map_err(|_| ServingError::Unavailable("batcher stopped".into()))?;
        rx.recv()
            .map_err(|_| ServingError::Unavailable("batcher stopped".into()))?
    }
}

/// One log line per failed request: its id (the client's, when it gave one) and why.
fn failed(id: Option<&str>, e: &ServingError) {
    tracing::warn!(request_id = id.unwrap_or("-"), kind = e.kind(), error = %e, "request failed");
}

/// A panic while serving a request, as the client sees it.
fn internal_error(p: &(dyn std::any::Any + Send)) -> ServingError {
    let message = format!("internal error: {}", panic_message(p));
    tracing::error!("{message}");
    ServingError::Unavailable(message)
}

/// An item's error inside a batch, naming the item.
fn at_item(i: usize, e: ServingError) -> ServingError {
    match e {
        ServingError::InvalidInput(m) => ServingError::InvalidInput(format!("requests[{i}]: {m}")),
        other => other,
    }
}

pub struct GatiHandler(pub Arc<Frontend>);

impl GatiSyncHandler for GatiHandler {
    fn handle_infer(&self, request: InferRequest) -> thrift::Result<InferResponse> {
        to_thrift(self.0.infer(request))
    }

    /// All or nothing: every request is checked before any runs (the first bad one is the
    /// error, naming its position); then they run as one batch.
    fn handle_infer_batch(&self, requests: Vec<InferRequest>) -> thrift::Result<Vec<InferResponse>> {
        to_thrift(self.0.infer_many(requests, true))?
            .into_iter()
            .enumerate()
            .map(|(i, r)| to_thrift(r.map_err(|e| at_item(i, e))))
            .collect()
    }

    fn handle_infer_each(&self, requests: Vec<InferRequest>) -> thrift::Result<Vec<InferOutcome>> {
        let n = requests.len();
        Ok(match self.0.infer_many(requests, false) {
            Ok(items) => items.into_iter().map(crate::errors::outcome).collect(),
            Err(e) => (0..n).map(|_| crate::errors::outcome(Err(e.clone()))).collect(),
        })
    }

    fn handle_models(&self) -> thrift::Result<Vec<ModelInfo>> {
        let f = &self.0;
        let [c, h, w] = f.spec.input_shape;
        let mode = gati_core::names::Named::name(&f.cluster.mode);
        Ok(vec![ModelInfo {
            name: f.spec.name.clone(),
            input_shape: vec![c, h, w],
            classes: f.classes.clone(),
            mode,
            cache_layers: if f.cluster.mode == ServeMode::BaseOnly {
                vec![]
            } else {
                f.plan.caches.iter().map(|c| c.layer.clone()).collect()
            },
            budget: OrderedFloat(f.plan.budget),
            input_layout: Some("NCHW".into()),
            colour: Some("RGB".into()),
            mean: Some(
                f.spec
                    .normalization
                    .mean
                    .iter()
                    .map(|&v| OrderedFloat(v as f64))
                    .collect(),
            ),
            std: Some(
                f.spec
                    .normalization
                    .std
                    .iter()
                    .map(|&v| OrderedFloat(v as f64))
                    .collect(),
            ),
            image_formats: Some(vec!["jpeg".into(), "png".into()]),
            budget_unit: Some(gati_core::names::Named::name(&f.plan.budget_kind)),
        }])
    }

    fn handle_health(&self) -> thrift::Result<Health> {
        Ok(self.0.health())
    }

    fn handle_stats(&self) -> thrift::Result<Stats> {
        let c = lock(&self.0.counts);
        Ok(Stats {
            requests: c.requests,
            hits: c.hits,
            misses: c.misses,
            errors: c.errors,
            hits_per_layer: c.hits_per_layer.clone(),
            in_flight: self.0.admitted.in_use() as i64,
        })
    }
}

/// `cache_kind` of a hit by a cache model, by the memory cache, and by the frontend's answers to
/// exact repeats (whose `cache_layer` is `input`).
pub const LEARNED: &str = "learned";
pub const MEMORY: &str = "memory";
pub const EXACT: &str = "exact";
pub const EXACT_LAYER: &str = "input";

/// Which cache answered a request.
struct CacheHit {
    layer: String,
    version: Option<String>,
    kind: String,
}

impl CacheHit {
    /// The `layer` label of hit metrics: the memory cache's hits apart from a cache model's there.
    fn label(&self) -> String {
        match self.kind.as_str() {
            MEMORY => gati_cache::evaluate::memory_label(&self.layer),
            EXACT => EXACT.into(),
            _ => self.layer.clone(),
        }
    }
}

pub struct SelectorHandler(pub Arc<Frontend>);

impl SelectorSyncHandler for SelectorHandler {
    fn handle_report(&self, result: CacheResult) -> thrift::Result<()> {
        self.0.report(result);
        Ok(())
    }

    fn handle_clear_memory(&self) -> thrift::Result<i64> {
        Ok(self.0.clear_exact() as i64)
    }
}
