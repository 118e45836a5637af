//! A cache worker: evaluates the cache models of its layers on streamed activations and reports
//! hit or miss to the selector named in each activation. With online learning on, the trainer
//! installs new cache versions here by RPC, between lookups.

use crate::config::Cluster;
use crate::errors::ServingError;
use crate::learning;
use crate::metrics::registered;
use crate::net::{self, Pool};
use crate::resources::lock;
use anyhow::{bail, Result};
use gati_cache::plan::Plan;
use gati_cache::runtime::EarlyExit;
use gati_core::BaseModel;
use gati_rpc::convert::tensor_from_wire;
use gati_rpc::*;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type SelectorClient = SelectorSyncClient<net::In, net::Out>;

pub struct CacheWorker {
    /// The caches and the version they are.
    caches: Mutex<(EarlyExit, String)>,
    planned: Vec<String>,
    serving_version: IntGauge,
    shapes: HashMap<i32, Vec<i64>>,
    selectors: Mutex<HashMap<String, std::sync::Arc<Pool<SelectorClient>>>>,
    lookups: IntCounterVec,
    lookup_seconds: HistogramVec,
    /// The only selector this worker reports to (an activation naming another is not answered).
    selector: String,
    token: Option<net::Token>,
    fault_delay: Duration,
}

impl CacheWorker {
    pub fn new(cluster: &Cluster, index: usize, registry: &Registry) -> Result<Self> {
        let Some(me) = cluster.caches.get(index) else {
            bail!(
                "cluster config has no caches[{index}] ({} cache workers)",
                cluster.caches.len()
            );
        };
        let plan = Plan::load(&cluster.plan)?;
        for l in &me.layers {
            if !plan.caches.iter().any(|c| &c.layer == l) {
                bail!(
                    "layer '{l}' of caches[{index}] has no cache in plan {}",
                    cluster.plan.display()
                );
            }
        }
        let model = BaseModel::new(&plan.model, tch::Device::Cpu)?;
        let shapes = model
            .stages()
            .iter()
            .enumerate()
            .map(|(k, s)| (k as i32, s.output_shape.clone()))
            .collect();
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
            selector: cluster.selector.clone(),
            token: cluster.token.clone(),
            fault_delay: Duration::from_millis(me.fault_delay_ms),
        })
    }

    fn evaluate(&self, a: &Activation) -> thrift::Result<CacheResult> {
        if !self.fault_delay.is_zero() {
            std::thread::sleep(self.fault_delay);
        }
        let t0 = Instant::now();
        let x = tensor_from_wire(&a.tensor).map_err(ServingError::from)?;
        if self.shapes.get(&a.stage) != Some(&x.size()) {
            return Err(thrift::Error::from(ServingError::InvalidInput(format!(
                "activation for stage {} has shape {:?}",
                a.stage,
                x.size()
            ))));
        }
        let guard = lock(&self.caches);
        let (ee, version) = (&guard.0, guard.1.clone());
        let Some(c) = ee.cache_at(a.stage as usize) else {
            return Err(thrift::Error::from(ServingError::InvalidInput(format!(
                "no cache for stage {} here",
                a.stage
            ))));
        };
        let (probs, hit) = EarlyExit::consult(c, &x);
        let layer = c.layer.clone();
        drop(guard);
        let outcome = if hit.is_some() { "hit" } else { "miss" };
        self.lookups.with_label_values(&[layer.as_str(), outcome]).inc();
        self.lookup_seconds
            .with_label_values(&[layer.as_str()])
            .observe(t0.elapsed().as_secs_f64());
        let (class, conf) = hit.map_or((-1, 0.0), |(c, p)| (c as i32, p as f64));
        Ok(CacheResult {
            request_id: a.request_id.clone(),
            stage: a.stage,
            hit: hit.is_some(),
            class_index: class,
            confidence: thrift::OrderedFloat(conf),
            compute_ms: thrift::OrderedFloat(t0.elapsed().as_secs_f64() * 1e3),
            version: Some(version),
            probs: Some(probs.into_iter().map(|p| thrift::OrderedFloat(p as f64)).collect()),
        })
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

    fn selector(&self, addr: &str) -> Option<std::sync::Arc<Pool<SelectorClient>>> {
        // Report only to the cluster's own selector: an activation cannot make this worker
        // connect elsewhere.
        if addr != self.selector && !self.selector.ends_with(":0") {
            return None;
        }
        let token = self.token.clone();
        let pool = lock(&self.selectors)
            .entry(addr.to_string())
            .or_insert_with(|| {
                std::sync::Arc::new(Pool::new(
                    addr,
                    Some(Duration::from_secs(2)),
                    token,
                    SelectorSyncClient::new,
                ))
            })
            .clone();
        Some(pool)
    }
}

pub struct Handler(pub std::sync::Arc<CacheWorker>);

impl CacheWorkerSyncHandler for Handler {
    fn handle_lookup(&self, activation: Activation) -> thrift::Result<()> {
        // Oneway: errors cannot be returned; a bad activation is simply not answered.
        if let (Some(pool), Ok(r)) = (self.0.selector(&activation.selector), self.0.evaluate(&activation)) {
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
}
