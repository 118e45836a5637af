//! A cache worker: evaluates the cache models of its layers on streamed activations and reports
//! hit or miss to the cluster's selector. With online learning on, the trainer
//! installs new cache versions here by RPC, between lookups.

use crate::config::Cluster;
use crate::errors::ServingError;
use crate::frontend::{LEARNED, MEMORY};
use crate::learning;
use crate::metrics::registered;
use crate::net::{self, Pool};
use crate::resources::lock;
use anyhow::{Context, Result};
use gati_cache::plan::Plan;
use gati_cache::runtime::EarlyExit;
use gati_core::BaseModel;
use gati_rpc::convert::tensor_from_wire;
use gati_rpc::*;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tch::Tensor;

type SelectorClient = SelectorSyncClient<net::In, net::Out>;

/// Memory keys and hits kept for answers to come.
const PENDING_KEYS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(4096).unwrap();

pub struct CacheWorker {
    /// The caches and the version they are.
    caches: Mutex<(EarlyExit, String)>,
    planned: Vec<String>,
    serving_version: IntGauge,
    shapes: HashMap<i32, Vec<i64>>,
    selectors: Mutex<HashMap<String, std::sync::Arc<Pool<SelectorClient>>>>,
    lookups: IntCounterVec,
    lookup_seconds: HistogramVec,
    /// The address of the only selector this worker reports to.
    selector: String,
    credentials: net::Credentials,
    /// Where the cache models run.
    device: tch::Device,
    fault_delay: Duration,
    /// The plan's memory cache, when this worker serves its layer.
    memory: Option<std::sync::Arc<gati_cache::memory::MemoryCache>>,
    /// Whichever half of a request's memory work came first, until the other arrives: the key of
    /// a request looked up and missed (or the hit it got), or its final answer when that overtook
    /// the activation (the base model can finish before this worker reads the stream). The oldest
    /// are dropped first (a request answered by a cache model, or whose answer was lost, is never
    /// remembered; a hit whose base run was cancelled is never audited). Requests in flight at
    /// once are far fewer: the frontend admits `max_in_flight`.
    pending: Mutex<lru::LruCache<String, Pending>>,
    /// The plan's budget: the memory's guard raises its confidence floor when audited hits
    /// disagree with the base model beyond it.
    budget: f64,
}

/// What this worker keeps of a request at the memory's layer until its final answer comes (or the
/// answer, when it came first).
enum Pending {
    /// Looked up and missed: the key its answer is stored under.
    Key(Tensor),
    /// Answered from memory: the stored class and confidence, audited against the base model's
    /// answer when the frontend had the base run finish (a sampled hit).
    Hit {
        class: usize,
        confidence: f32,
    },
    Answer(Vec<f32>),
}

impl CacheWorker {
    pub fn new(cluster: &Cluster, index: usize, registry: &Registry) -> Result<Self> {
        let me = cluster.cache(index)?;
        let device = me.endpoint.device.open().with_context(|| format!("caches[{index}]"))?;
        let plan = Plan::load(&cluster.plan)?;
        cluster.check_layers(&plan)?;
        let model = BaseModel::new(&plan.model, device)?;
        let shapes = model
            .stages()
            .iter()
            .enumerate()
            .map(|(k, s)| (k as i32, s.output_shape.clone()))
            .collect();
        let memory = match &plan.memory {
            Some(m) if me.layers.contains(&m.spec.layer) => {
                let cache = std::sync::Arc::new(gati_cache::runtime::memory_cache(&model, &m.spec)?);
                registry.register(Box::new(crate::metrics::MemoryCollector::new(cache.clone())?))?;
                Some(cache)
            }
            _ => None,
        };
        let mut ee = EarlyExit::with_layers(&plan, model, &plan.caches_path(&cluster.plan), Some(&me.layers))?;
        let start = learning::StartVersion::read(cluster)?;
        start.install(&mut ee)?;
        let version = start.name;
        let serving_version = registered(
            registry,
            IntGauge::new("gati_serving_version", "Cache version served (0 is the plan)")?,
        )?;
        serving_version.set(learning::version_number(&version));
        let lookups = registered(
            registry,
            IntCounterVec::new(
                Opts::new("gati_cache_lookups_total", "Cache lookups by layer and outcome"),
                &["layer", "outcome"],
            )?,
        )?;
        let lookup_seconds = registered(
            registry,
            HistogramVec::new(
                HistogramOpts::new("gati_cache_lookup_seconds", "Cache model evaluation time, by layer")
                    .buckets(prometheus::exponential_buckets(1e-5, 1.6, 20)?),
                &["layer"],
            )?,
        )?;
        Ok(Self {
            lookup_seconds,
            caches: Mutex::new((ee, version)),
            planned: plan.caches.iter().map(|c| c.layer.clone()).collect(),
            serving_version,
            shapes,
            selectors: Mutex::new(HashMap::new()),
            lookups,
            selector: cluster.selector_address().to_string(),
            credentials: cluster.credentials(),
            device,
            fault_delay: Duration::from_millis(me.fault_delay_ms),
            memory,
            pending: Mutex::new(lru::LruCache::new(PENDING_KEYS)),
            budget: plan.budget,
        })
    }

    /// Result of a lookup at `a.stage`, learned or memory.
    fn result(
        a: &Activation,
        hit: Option<(usize, f32)>,
        probs: Vec<f32>,
        kind: &str,
        version: Option<String>,
        t0: Instant,
    ) -> CacheResult {
        let (class, conf) = hit.map_or((-1, 0.0), |(c, p)| (c as i32, p as f64));
        CacheResult {
            request_id: a.request_id.clone(),
            stage: a.stage,
            hit: hit.is_some(),
            class_index: class,
            confidence: thrift::OrderedFloat(conf),
            compute_ms: thrift::OrderedFloat(t0.elapsed().as_secs_f64() * 1e3),
            version,
            probs: (!probs.is_empty()).then(|| probs.into_iter().map(|p| thrift::OrderedFloat(p as f64)).collect()),
            cache_kind: Some(kind.into()),
        }
    }

    fn count(&self, layer: &str, hit: bool, t0: Instant) {
        let outcome = if hit { "hit" } else { "miss" };
        self.lookups.with_label_values(&[layer, outcome]).inc();
        self.lookup_seconds
            .with_label_values(&[layer])
            .observe(t0.elapsed().as_secs_f64());
    }

    /// The memory cache's lookup, when it is at this stage: a hit, or None after keeping the key
    /// for the request's answer.
    fn recall(&self, a: &Activation, x: &Tensor, t0: Instant) -> Option<CacheResult> {
        let mem = self.memory.as_ref().filter(|m| m.spec.stage as i32 == a.stage)?;
        let key = mem.keys(x);
        let found = mem.answer_rows(&key).pop().flatten();
        let label = gati_cache::evaluate::memory_label(&mem.spec.layer);
        self.count(&label, found.is_some(), t0);
        match found {
            Some((probs, class, confidence)) => {
                self.meet(mem, a.request_id.clone(), Pending::Hit { class, confidence });
                Some(Self::result(a, Some((class, confidence)), probs, MEMORY, None, t0))
            }
            None => {
                self.meet(mem, a.request_id.clone(), Pending::Key(key.get(0)));
                None
            }
        }
    }

    /// Stores a request's final answer under the key its lookup kept.
    fn remember(&self, answer: FinalAnswer) {
        if let Some(mem) = &self.memory {
            let probs = answer.probs.iter().map(|p| p.0 as f32).collect();
            self.meet(mem, answer.request_id, Pending::Answer(probs));
        }
    }

    /// One half of request `id`'s memory work: with its final answer, a missed key is stored and a
    /// hit audited; the half that comes first waits for the other.
    fn meet(&self, mem: &gati_cache::memory::MemoryCache, id: String, half: Pending) {
        let mut waiting = lock(&self.pending);
        match (waiting.pop(&id), half) {
            (Some(Pending::Key(key)), Pending::Answer(probs)) | (Some(Pending::Answer(probs)), Pending::Key(key)) => {
                drop(waiting);
                mem.remember(&key, probs);
            }
            (Some(Pending::Hit { class, confidence }), Pending::Answer(probs))
            | (Some(Pending::Answer(probs)), Pending::Hit { class, confidence }) => {
                drop(waiting);
                let wrong = gati_cache::outcomes::top1(&probs).0 != class;
                crate::memory_audit::tell_guard(mem, confidence, wrong, self.budget);
            }
            (_, half) => {
                waiting.put(id, half);
            }
        }
    }

    fn clear_memory(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.clear())
    }

    fn evaluate(&self, a: &Activation) -> thrift::Result<CacheResult> {
        if !self.fault_delay.is_zero() {
            std::thread::sleep(self.fault_delay);
        }
        let t0 = Instant::now();
        let x = tensor_from_wire(&a.tensor)
            .map_err(ServingError::from)?
            .to_device(self.device);
        if self.shapes.get(&a.stage) != Some(&x.size()) {
            return Err(thrift::Error::from(ServingError::InvalidInput(format!(
                "activation for stage {} has shape {:?}",
                a.stage,
                x.size()
            ))));
        }
        let memory_here = self.memory.as_ref().is_some_and(|m| m.spec.stage as i32 == a.stage);
        // The memory first, as in the inline walk: a stored answer is cheaper than a cache model.
        if let Some(hit) = self.recall(a, &x, t0) {
            return Ok(hit);
        }
        let guard = lock(&self.caches);
        let (ee, version) = (&guard.0, guard.1.clone());
        let Some(c) = ee.cache_at(a.stage as usize) else {
            drop(guard);
            if memory_here {
                return Ok(Self::result(a, None, Vec::new(), MEMORY, None, t0));
            }
            return Err(thrift::Error::from(ServingError::InvalidInput(format!(
                "no cache for stage {} here",
                a.stage
            ))));
        };
        let (probs, hit) = EarlyExit::consult(c, &x);
        let layer = c.layer.clone();
        drop(guard);
        self.count(&layer, hit.is_some(), t0);
        Ok(Self::result(a, hit, probs, LEARNED, Some(version), t0))
    }

    /// Installs a version between two lookups.
    fn install(&self, v: CacheVersion) -> thrift::Result<()> {
        let states = learning::version_from_wire(&v, &self.planned).map_err(ServingError::from)?;
        let mut guard = lock(&self.caches);
        learning::install_all(&mut guard.0, &v.version, &states).map_err(ServingError::from)?;
        guard.1 = v.version.clone();
        self.serving_version.set(learning::version_number(&v.version));
        Ok(())
    }

    /// The selector to report to: the cluster's own, by its configured address (an activation
    /// cannot make this worker connect elsewhere), or, where that port is 0 (chosen when the
    /// frontend binds, in tests), the address the activation names.
    fn selector(&self, named: &str) -> std::sync::Arc<Pool<SelectorClient>> {
        let addr = if self.selector.ends_with(":0") {
            named
        } else {
            &self.selector
        };
        let credentials = self.credentials.clone();
        lock(&self.selectors)
            .entry(addr.to_string())
            .or_insert_with(|| {
                std::sync::Arc::new(Pool::new(
                    addr,
                    Some(Duration::from_secs(2)),
                    credentials,
                    SelectorSyncClient::new,
                ))
            })
            .clone()
    }
}

pub struct Handler(pub std::sync::Arc<CacheWorker>);

impl CacheWorkerSyncHandler for Handler {
    fn handle_lookup(&self, activation: Activation) -> thrift::Result<()> {
        // Oneway: errors cannot be returned; a bad activation is simply not answered.
        if let Ok(r) = self.0.evaluate(&activation) {
            let pool = self.0.selector(&activation.selector);
            if pool.call(|s| s.report(r)).is_err() {
                pool.reset();
            }
        }
        Ok(())
    }

    fn handle_lookup_sync(&self, activation: Activation) -> thrift::Result<CacheResult> {
        self.0.evaluate(&activation)
    }

    fn handle_health(&self) -> thrift::Result<Health> {
        Ok(Health {
            ok: true,
            workers: Default::default(),
        })
    }

    fn handle_install(&self, version: CacheVersion) -> thrift::Result<()> {
        self.0.install(version)
    }

    fn handle_serving_version(&self) -> thrift::Result<String> {
        Ok(lock(&self.0.caches).1.clone())
    }

    fn handle_remember(&self, answer: FinalAnswer) -> thrift::Result<()> {
        self.0.remember(answer);
        Ok(())
    }

    fn handle_clear_memory(&self) -> thrift::Result<i64> {
        Ok(self.0.clear_memory() as i64)
    }
}
