//! The trainer: online learning as its own low-priority process. Every `poll_ms` it drains the
//! base worker's samples into a `Learner`; when a round promotes (or the accuracy guard switches a
//! layer off) it writes a new version to the state folder and installs it in the workers by RPC.
//! It also re-installs the serving version in any worker that reports another one (a restarted
//! worker, or one on another machine without the state folder), and serves the operator's
//! `Trainer` service (versions, pin, rollback, pause).

use crate::config::{Cluster, ServeMode, TrainerEndpoint};
use crate::errors::ServingError;
use crate::learning::{self, version_to_wire};
use crate::metrics::registered;
use crate::net::{self, Pool};
use crate::resources::lock;
use anyhow::{Context, Result};
use gati_cache::online::{Learner, OnlineConfig};
use gati_cache::plan::Plan;
use gati_cache::runtime::{CacheState, EarlyExit};
use gati_cache::versions::{self, VersionIndex, VersionStore};
use gati_core::names::Named;
use gati_core::BaseModel;
use gati_rpc::convert::tensor_from_wire;
use gati_rpc::*;
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;

type BaseClient = BaseWorkerSyncClient<net::In, net::Out>;
type CacheClient = CacheWorkerSyncClient<net::In, net::Out>;

/// A worker that serves caches: the base worker (inline mode) or a cache worker.
enum Worker {
    Base(Pool<BaseClient>),
    Cache(Pool<CacheClient>),
}

impl Worker {
    fn addr(&self) -> &str {
        match self {
            Worker::Base(p) => p.addr(),
            Worker::Cache(p) => p.addr(),
        }
    }

    fn serving_version(&self) -> thrift::Result<String> {
        match self {
            Worker::Base(p) => p.call(|c| c.serving_version()),
            Worker::Cache(p) => p.call(|c| c.serving_version()),
        }
    }

    fn install(&self, v: &CacheVersion) -> thrift::Result<()> {
        match self {
            Worker::Base(p) => p.call(|c| c.install(v.clone())),
            Worker::Cache(p) => p.call(|c| c.install(v.clone())),
        }
    }

    fn reset(&self) {
        match self {
            Worker::Base(p) => p.reset(),
            Worker::Cache(p) => p.reset(),
        }
    }
}

struct Metrics {
    rounds: IntCounter,
    round_seconds: Histogram,
    promotions: IntCounterVec,
    guard_actions: IntCounterVec,
    samples: IntCounter,
    completed: IntCounter,
    serving: IntGauge,
    agreement: GaugeVec,
    enabled: GaugeVec,
    installs: IntCounterVec,
    samples_lost: Gauge,
}

impl Metrics {
    fn new(r: &Registry) -> Result<Self> {
        let cv = |n: &str, h: &str, l: &[&str]| registered(r, IntCounterVec::new(Opts::new(n, h), l)?);
        let gv = |n: &str, h: &str, l: &[&str]| registered(r, GaugeVec::new(Opts::new(n, h), l)?);
        let m = Self {
            rounds: registered(r, IntCounter::new("gati_online_rounds_total", "Training rounds run")?)?,
            round_seconds: registered(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("gati_online_round_seconds", "Wall time of a training round")
                        .buckets(prometheus::exponential_buckets(0.01, 2.0, 14)?),
                )?,
            )?,
            promotions: cv(
                "gati_online_promotions_total",
                "Retrained caches promoted after validation, by layer",
                &["layer"],
            )?,
            guard_actions: cv(
                "gati_online_guard_actions_total",
                "Accuracy guard actions (raised thresholds, disabled), by layer",
                &["layer", "action"],
            )?,
            samples: registered(
                r,
                IntCounter::new("gati_online_samples_received_total", "Samples taken from the base worker")?,
            )?,
            completed: registered(
                r,
                IntCounter::new(
                    "gati_online_samples_completed_total",
                    "Sampled inline hits whose base run the trainer completed",
                )?,
            )?,
            serving: registered(
                r,
                IntGauge::new("gati_online_serving_version", "The version the workers are told to serve")?,
            )?,
            agreement: gv(
                "gati_online_layer_agreement",
                "Live agreement of a layer's hits with the base model on uniform samples (estimate, and 95% Wilson bounds)",
                &["layer", "bound"],
            )?,
            enabled: gv(
                "gati_online_layer_enabled",
                "1 while a layer's cache may answer, 0 while the guard keeps it off",
                &["layer"],
            )?,
            installs: cv(
                "gati_online_installs_total",
                "Version installs sent to workers, by outcome",
                &["outcome"],
            )?,
            samples_lost: registered(
                r,
                Gauge::new(
                    "gati_online_samples_lost",
                    "Samples the base worker could not keep (busy or evicted), as it last reported",
                )?,
            )?,
        };
        Ok(m)
    }
}

struct State {
    learner: Learner,
    index: VersionIndex,
}

pub struct Trainer {
    settings: TrainerEndpoint,
    store: VersionStore,
    state: Mutex<State>,
    base: Pool<BaseClient>,
    workers: Vec<Worker>,
    /// Samples asked for per drain (fits the frame limit).
    max_take: i32,
    metrics: Metrics,
}

impl Trainer {
    pub fn new(cluster: &Cluster, registry: &Registry) -> Result<Self> {
        let settings = cluster
            .trainer
            .clone()
            .context("the cluster config has no trainer section (online learning is off)")?;
        let dir = cluster.state_dir().expect("trainer present");
        let mut store = VersionStore::open(&cluster.plan, &dir)?;
        store.write_delay = Duration::from_millis(settings.fault_write_delay_ms);
        let index = store.index()?;
        let plan = Plan::load(&cluster.plan)?;
        // The base model's weights too: the trainer completes inline hits sampled to complete.
        let model = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
        let sample_bytes: i64 = plan
            .caches
            .iter()
            .map(|c| 4 * model.stages()[c.stage].output_shape.iter().product::<i64>())
            .sum::<i64>()
            .max(1);
        let max_take = (cluster.max_frame_bytes as i64 / 2 / sample_bytes).clamp(1, 512) as i32;
        let ee = EarlyExit::from_plan(&plan, model, &plan.caches_path(&cluster.plan))?;
        // Thresholds fitted on a few dozen recent samples per class are optimistic: fit them to
        // half the budget by default.
        let error_target = settings.error_target.unwrap_or(plan.budget / 2.0);
        let cfg = OnlineConfig {
            buffer: settings.evidence,
            retrain_every: settings.retrain_every,
            steps: settings.steps,
            error_target,
            guard_error: (plan.budget / plan.expected.hit_rate.max(0.05)).clamp(error_target, 0.5),
            ..Default::default()
        };
        let mut learner = Learner::new(ee, cfg);
        if index.serving != 0 {
            learner.reset_to(&store.states(&index, index.serving)?)?;
        }
        let pool_base = || {
            Pool::new(
                cluster.base.address(),
                Some(Duration::from_secs(10)),
                cluster.credentials(),
                BaseWorkerSyncClient::new,
            )
        };
        let workers = match cluster.mode {
            ServeMode::Inline => vec![Worker::Base(pool_base())],
            _ => cluster
                .caches
                .iter()
                .map(|c| {
                    Worker::Cache(Pool::new(
                        c.endpoint.address(),
                        Some(Duration::from_secs(10)),
                        cluster.credentials(),
                        CacheWorkerSyncClient::new,
                    ))
                })
                .collect(),
        };
        let metrics = Metrics::new(registry)?;
        metrics.serving.set(index.serving as i64);
        Ok(Self {
            settings,
            store,
            state: Mutex::new(State { learner, index }),
            base: pool_base(),
            workers,
            max_take,
            metrics,
        })
    }

    /// The learning loop (runs forever).
    pub fn run(&self) {
        loop {
            std::thread::sleep(Duration::from_millis(self.settings.poll_ms));
            if let Err(e) = self.step() {
                tracing::warn!("{e:#}");
            }
        }
    }

    fn step(&self) -> Result<()> {
        self.sync_workers();
        if lock(&self.state).index.paused {
            return Ok(());
        }
        let batch = match self.base.call(|c| c.take_samples(self.max_take)) {
            Ok(b) => b,
            Err(e) => {
                self.base.reset();
                return Err(anyhow::anyhow!("taking samples from the base worker: {e:?}"));
            }
        };
        self.metrics.samples_lost.set(batch.dropped as f64);
        let mut st = lock(&self.state);
        let stages: Vec<i32> = st.learner.ee.caches.iter().map(|c| c.stage as i32).collect();
        anyhow::ensure!(
            batch.stages == stages,
            "base worker samples stages {:?}, the plan's caches are at {stages:?}",
            batch.stages
        );
        // Oldest first, as they happened.
        for s in batch.samples.iter().rev() {
            let acts = s
                .activations
                .iter()
                .map(tensor_from_wire)
                .collect::<Result<Vec<Tensor>, _>>()
                .map_err(|e| anyhow::anyhow!("sample: {}", e.message))?;
            let logits: Vec<f32> = s.logits.iter().map(|v| v.0 as f32).collect();
            let partial = logits.is_empty();
            let (acts, logits) = learning::complete_sample(&st.learner.ee, acts, &logits)?;
            st.learner.add(acts, &logits, s.uniform);
            if partial {
                self.metrics.completed.inc();
            }
            self.metrics.samples.inc();
        }
        if st.index.pinned.is_some() {
            return Ok(());
        }
        let acted = st.learner.guard();
        for (l, a) in &acted {
            self.metrics
                .guard_actions
                .with_label_values(&[l.as_str(), a.name().as_str()])
                .inc();
        }
        if !acted.is_empty() {
            let note: Vec<String> = acted.iter().map(|(l, a)| format!("guard {} {l}", a.name())).collect();
            tracing::info!("{}", note.join("; "));
            self.publish(&mut st, &note.join("; "))?;
        }
        if st.learner.due() {
            let t = Instant::now();
            let round = st.learner.round();
            self.metrics.rounds.inc();
            self.metrics.round_seconds.observe(t.elapsed().as_secs_f64());
            let promoted: Vec<&str> = round
                .layers
                .iter()
                .filter(|l| l.promoted)
                .map(|l| l.layer.as_str())
                .collect();
            let reverted: Vec<&str> = round
                .layers
                .iter()
                .filter(|l| l.reverted && !l.promoted)
                .map(|l| l.layer.as_str())
                .collect();
            for l in &promoted {
                self.metrics.promotions.with_label_values(&[l]).inc();
            }
            if std::env::var_os("GATI_TRAINER_VERBOSE").is_some() {
                let detail: Vec<String> = round
                    .layers
                    .iter()
                    .map(|l| {
                        format!(
                            "{} on {}: serving {}/{} wrong, candidate {}/{} (balanced {}/{})",
                            l.layer,
                            l.validation,
                            l.serving_hits,
                            l.serving_wrong,
                            l.candidate_hits,
                            l.candidate_wrong,
                            l.balanced_hits,
                            l.balanced_wrong
                        )
                    })
                    .collect();
                tracing::info!(at_sample = round.at_request, "round: {}", detail.join("; "));
            }
            if !promoted.is_empty() || !reverted.is_empty() {
                let mut note = Vec::new();
                if !promoted.is_empty() {
                    note.push(format!("promoted {}", promoted.join(", ")));
                }
                if !reverted.is_empty() {
                    note.push(format!("restored the plan's {}", reverted.join(", ")));
                }
                tracing::info!(at_sample = round.at_request, "round: {}", note.join("; "));
                self.publish(&mut st, &note.join("; "))?;
            }
        }
        self.export_live(&st);
        Ok(())
    }

    /// The learner's caches become a new version: written, made serving, installed.
    fn publish(&self, st: &mut State, note: &str) -> Result<()> {
        let states = st.learner.ee.states();
        let id = self.store.add(&mut st.index, &states, note)?;
        self.metrics.serving.set(id as i64);
        self.install_everywhere(&versions::name(id), &states);
        Ok(())
    }

    fn install_everywhere(&self, version: &str, states: &[CacheState]) {
        let wire = version_to_wire(version, states);
        for w in &self.workers {
            self.install_on(w, &wire);
        }
    }

    fn install_on(&self, w: &Worker, wire: &CacheVersion) {
        match w.install(wire) {
            Ok(()) => self.metrics.installs.with_label_values(&["ok"]).inc(),
            Err(e) => {
                self.metrics.installs.with_label_values(&["failed"]).inc();
                tracing::warn!(version = %wire.version, worker = %w.addr(), "installing failed: {e:?}");
                w.reset();
            }
        }
    }

    /// Every worker serves the serving version (a restarted worker may have come up with another).
    fn sync_workers(&self) {
        let st = lock(&self.state);
        let want = versions::name(st.index.serving);
        let mut wire = None;
        for w in &self.workers {
            match w.serving_version() {
                Ok(v) if v == want => {}
                Ok(_) => {
                    let wire = wire.get_or_insert_with(|| version_to_wire(&want, &st.learner.ee.states()));
                    self.install_on(w, wire);
                }
                Err(_) => w.reset(),
            }
        }
    }

    fn export_live(&self, st: &State) {
        for (c, l) in st.learner.ee.caches.iter().zip(st.learner.live()) {
            for (bound, v) in [("estimate", l.agreement), ("lower", l.lower), ("upper", l.upper)] {
                self.metrics.agreement.with_label_values(&[&c.layer, bound]).set(v);
            }
            self.metrics
                .enabled
                .with_label_values(&[&c.layer])
                .set(c.enabled as i64 as f64);
        }
    }

    fn versions(&self) -> Versions {
        let st = lock(&self.state);
        self.describe(&st)
    }

    fn describe(&self, st: &State) -> Versions {
        let idx = &st.index;
        Versions {
            serving: versions::name(idx.serving),
            pinned: idx.pinned.map(versions::name),
            paused: idx.paused,
            versions: idx
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: versions::name(v.id),
                    created_unix: v.created_unix as i64,
                    note: v.note.clone(),
                    disabled_layers: v.disabled.clone(),
                })
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|w| (w.addr().to_string(), w.serving_version().unwrap_or_else(|_| "?".into())))
                .collect(),
        }
    }

    /// Serves version `id` and stops promoting until unpinned.
    fn pin(&self, id: u64) -> thrift::Result<Versions> {
        let mut st = lock(&self.state);
        let states = self.store.states(&st.index, id).map_err(admin_err)?;
        st.learner.reset_to(&states).map_err(admin_err)?;
        st.index.pinned = Some(id);
        st.index.serving = id;
        self.store.save_index(&st.index).map_err(admin_err)?;
        self.metrics.serving.set(id as i64);
        self.install_everywhere(&versions::name(id), &states);
        Ok(self.describe(&st))
    }

    fn update(&self, f: impl FnOnce(&mut VersionIndex)) -> thrift::Result<Versions> {
        let mut st = lock(&self.state);
        f(&mut st.index);
        self.store.save_index(&st.index).map_err(admin_err)?;
        Ok(self.describe(&st))
    }
}

fn admin_err(e: anyhow::Error) -> thrift::Error {
    thrift::Error::from(ServingError::Admin(format!("{e:#}")))
}

pub struct Handler(pub Arc<Trainer>);

impl TrainerSyncHandler for Handler {
    fn handle_versions(&self) -> thrift::Result<Versions> {
        Ok(self.0.versions())
    }

    fn handle_pin(&self, version: String) -> thrift::Result<Versions> {
        let id = versions::parse_name(&version).map_err(admin_err)?;
        self.0.pin(id)
    }

    fn handle_unpin(&self) -> thrift::Result<Versions> {
        self.0.update(|i| i.pinned = None)
    }

    fn handle_rollback(&self) -> thrift::Result<Versions> {
        let before = {
            let st = lock(&self.0.state);
            st.index.before(st.index.serving)
        };
        match before {
            Some(id) => self.0.pin(id),
            None => Err(admin_err(anyhow::anyhow!("no version before the serving one"))),
        }
    }

    fn handle_pause(&self, paused: bool) -> thrift::Result<Versions> {
        self.0.update(|i| i.paused = paused)
    }
}

/// Lowers this process's scheduling priority (serving comes first).
pub fn set_nice(nice: i32) {
    // SAFETY: setpriority on our own process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}
