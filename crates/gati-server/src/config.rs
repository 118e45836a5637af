//! `CLUSTER.json`: where every role listens and how the deployment behaves.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ServeMode {
    /// No caches: every request runs the whole base model (the baseline).
    BaseOnly,
    /// Caches run inside the base worker, between stages.
    Inline,
    /// Caches run in cache-worker processes fed by streamed activations.
    Distributed,
}

impl gati_core::names::Named for ServeMode {
    fn what() -> &'static str {
        "serving mode"
    }
}

impl ServeMode {
    /// How a plan made for `mode` is served by default.
    pub fn of_plan(mode: gati_cache::planner::Mode) -> Self {
        match mode {
            gati_cache::planner::Mode::Inline => ServeMode::Inline,
            gati_cache::planner::Mode::Distributed => ServeMode::Distributed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// The address this process binds (e.g. `0.0.0.0:7002`).
    pub listen: String,
    /// The address its peers dial, host names allowed (e.g. `base:7002` in compose or
    /// Kubernetes); absent: `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Prometheus `/metrics` and `/health` over HTTP (absent: none).
    #[serde(default)]
    pub metrics: Option<String>,
    /// libtorch intra-op threads of this process.
    #[serde(default = "one")]
    pub threads: usize,
    /// CPU set to pin this process to (e.g. [0] or [1]); empty: no pinning.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// Keep the pinned CPUs busy while this process waits: one spinning thread per CPU at the
    /// lowest priority (Linux `SCHED_IDLE`: it runs only when nothing else wants the CPU). On a
    /// virtual machine a base worker that idled for a few milliseconds (a memory cache answering
    /// the repeats elsewhere) ran its next request 1-2 ms slower (docs/results.md). Costs the
    /// CPUs' idle time, which counts as this process's CPU time. Needs `cpus`.
    #[serde(default)]
    pub keep_awake: bool,
    /// Base worker, inline: a CPU of its own for the caches the plan runs beside the base model
    /// (students). Their thread is pinned there and waits between jobs at the lowest priority,
    /// so that no other thread there (the frontend, an RPC reply) queues behind its spin
    /// (`Beside::own_cpu`). Absent: they share `cpus`.
    #[serde(default)]
    pub beside_cpu: Option<usize>,
    /// Where its models run: `cpu` (default), `cuda` or `cuda:N` (base and cache workers; a
    /// device the process cannot use stops it at start).
    #[serde(default)]
    pub device: gati_core::device::DeviceName,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Stage names of the plan's caches this worker serves.
    pub layers: Vec<String>,
    /// Fault injection for tests: delay every lookup by this long.
    #[serde(default)]
    pub fault_delay_ms: u64,
}

/// Online learning: the trainer process and how it learns. Present: the base worker collects
/// samples, workers serve the trainer's latest version, the trainer runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Where versions are kept (default: `PLAN_DIR/online`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Memory the base worker may hold in collected samples, in MB.
    #[serde(default = "buffer_mb")]
    pub buffer_mb: f64,
    /// Samples kept per cache by the trainer (class-balanced).
    #[serde(default = "evidence")]
    pub evidence: usize,
    /// New samples between training rounds.
    #[serde(default = "retrain_every")]
    pub retrain_every: usize,
    /// SGD steps per cache per round.
    #[serde(default = "steps")]
    pub steps: usize,
    /// Disagreement with the base model allowed among a learned cache's hits (default: half the
    /// plan's budget).
    #[serde(default)]
    pub error_target: Option<f64>,
    /// How often the trainer collects samples and checks the workers' versions.
    #[serde(default = "poll_ms")]
    pub poll_ms: u64,
    /// Scheduling niceness of the trainer process (19: lowest priority).
    #[serde(default = "nice")]
    pub nice: i32,
    /// Fault injection for tests: pause this long between the steps of writing a version.
    #[serde(default)]
    pub fault_write_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub plan: PathBuf,
    pub mode: ServeMode,
    pub frontend: Endpoint,
    /// Where the frontend's Selector service listens; cache workers report there.
    pub selector: String,
    /// The address cache workers dial to report, host names allowed; absent: `selector`.
    #[serde(default)]
    pub selector_advertise: Option<String>,
    pub base: Endpoint,
    #[serde(default)]
    pub caches: Vec<CacheEndpoint>,
    /// Fraction of cache hits whose base run still completes (agreement measurement); the
    /// others cancel the base model's remaining stages.
    #[serde(default = "complete_fraction")]
    pub complete_on_hit_fraction: f64,
    #[serde(default = "max_frame")]
    pub max_frame_bytes: usize,
    /// Connections a server holds open at once (more are closed on accept).
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold open at once.
    #[serde(default = "max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// A connection that starts no request for this long is closed.
    #[serde(default = "idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A request must arrive whole within this long once its first byte has.
    #[serde(default = "frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// The frontend's dynamic batcher (inline and base-only): concurrent requests run together
    /// in one base run of at most this many (1: no batching).
    #[serde(default = "one")]
    pub max_batch: usize,
    /// How long the batcher waits after a batch's first request for more to join it.
    #[serde(default = "max_batch_delay_ms")]
    pub max_batch_delay_ms: f64,
    /// Requests admitted at once by the frontend; more get `Overloaded`.
    #[serde(default = "max_in_flight")]
    pub max_in_flight: usize,
    /// Deadline applied when a request brings none.
    #[serde(default = "default_deadline")]
    pub default_deadline_ms: u64,
    /// A file holding a shared secret: when set, the internal services (base, cache, selector)
    /// accept only connections that present it. The public `Gati` service stays open.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Answers the frontend keeps for exact repeats (a request whose input bytes equal an earlier
    /// one's gets its answer without a base run). Absent: 4096 when the plan has a memory cache
    /// (it was planned for traffic with repeats) and no trainer changes the caches, else none;
    /// 0: none.
    #[serde(default)]
    pub exact_cache_entries: Option<usize>,
    /// TLS certificates: when set, the links between roles are mutual TLS (each role presents
    /// `cert_file` and accepts only peers the CA signed), and the public service per `public`.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Inline mode with a memory cache in the plan: whether the frontend holds it (running the
    /// base model's stages up to its layer itself, so a repeat costs no base-worker round trip)
    /// rather than the base worker. Absent: the frontend when those stages take at most 5% of the
    /// base model's time (a miss runs them twice).
    #[serde(default)]
    pub memory_at_frontend: Option<bool>,
    /// The base worker runs inside the frontend's process: the frontend calls it directly,
    /// saving a loopback round trip per request (about 0.2 ms on a 2-vCPU VM), and it still
    /// serves its Thrift service on `base.listen` for the trainer and `gati admin`. The process
    /// takes `base`'s placement (threads, CPUs, keep_awake, device); the two then share a fate:
    /// a crash of one restarts both. For a frontend and base worker on one machine.
    #[serde(default)]
    pub base_in_frontend: bool,
    /// Online learning (absent: the plan's caches, frozen).
    #[serde(default)]
    pub trainer: Option<TrainerEndpoint>,
    /// Fault injection for tests: the base worker's run of the request with this id panics.
    #[serde(default)]
    pub fault_panic_request: Option<String>,
    /// The token read from `auth_token_file` (by `load`).
    #[serde(skip)]
    pub token: Option<crate::net::Token>,
    /// The TLS configurations built from `tls` (by `load`).
    #[serde(skip)]
    pub tls_loaded: Option<crate::tls::Tls>,
}

fn buffer_mb() -> f64 {
    64.0
}
fn evidence() -> usize {
    1500
}
fn retrain_every() -> usize {
    200
}
fn steps() -> usize {
    40
}
fn poll_ms() -> u64 {
    200
}
fn nice() -> i32 {
    10
}
fn one() -> usize {
    1
}
fn complete_fraction() -> f64 {
    0.05
}
fn max_frame() -> usize {
    16 << 20
}
fn max_connections() -> usize {
    10_000
}
fn max_connections_per_peer() -> usize {
    1024
}
fn idle_timeout_ms() -> u64 {
    300_000
}
fn frame_timeout_ms() -> u64 {
    10_000
}
fn max_batch_delay_ms() -> f64 {
    2.0
}
fn max_in_flight() -> usize {
    64
}
fn default_deadline() -> u64 {
    5000
}

impl Endpoint {
    /// The address peers dial.
    pub fn address(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }
}

impl Cluster {
    /// Every process's endpoint, named as in the config (`caches[i]`).
    fn endpoints(&self) -> Vec<(String, &Endpoint)> {
        let mut all = vec![("frontend".to_string(), &self.frontend), ("base".into(), &self.base)];
        all.extend(
            self.caches
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("caches[{i}]"), &c.endpoint)),
        );
        all.extend(self.trainer.iter().map(|t| ("trainer".to_string(), &t.endpoint)));
        all
    }

    /// Cache worker `i`'s entry.
    pub fn cache(&self, i: usize) -> Result<&CacheEndpoint> {
        self.caches.get(i).ok_or_else(|| self.no_cache(i))
    }

    pub fn cache_mut(&mut self, i: usize) -> Result<&mut CacheEndpoint> {
        let e = self.no_cache(i);
        self.caches.get_mut(i).ok_or(e)
    }

    fn no_cache(&self, i: usize) -> anyhow::Error {
        anyhow::anyhow!(
            "no caches[{i}] in the cluster config ({} cache workers)",
            self.caches.len()
        )
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading cluster config {}", path.display()))?;
        let mut c = Self::parse(&bytes, path)?;
        c.load_secrets()?;
        Ok(c)
    }

    /// A config's text, checked (unknown keys, values) but its token not read; `path` names it in
    /// errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let c: Cluster =
            serde_json::from_slice(bytes).with_context(|| format!("parsing cluster config {}", path.display()))?;
        let given: serde_json::Value = serde_json::from_slice(bytes)?;
        let unknown = unknown_keys(&given, &serde_json::to_value(&c)?, "");
        if !unknown.is_empty() {
            // A mistyped key (say `auth_token_fle`) would otherwise leave its setting at the default.
            bail!(
                "cluster config {}: unknown key(s) {}",
                path.display(),
                unknown.join(", ")
            );
        }
        c.check()
            .with_context(|| format!("cluster config {}", path.display()))?;
        Ok(c)
    }

    /// Reads `auth_token_file` into `token` and the `tls` files into `tls_loaded`.
    pub fn load_secrets(&mut self) -> Result<()> {
        if let Some(files) = &self.tls {
            self.tls_loaded = Some(files.load().context("cluster config: tls")?);
        }
        if let Some(f) = &self.auth_token_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading auth_token_file {}", f.display()))?;
            let t = t.trim();
            if t.len() < 16 || t.len() > 1024 {
                bail!("auth_token_file {}: the token must be 16 to 1024 bytes", f.display());
            }
            self.token = Some(t.into());
        }
        Ok(())
    }

    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.complete_on_hit_fraction) {
            bail!(
                "complete_on_hit_fraction must be in [0, 1], got {}",
                self.complete_on_hit_fraction
            );
        }
        if self.max_batch == 0 || self.max_batch > 1024 {
            bail!("max_batch must be in [1, 1024], got {}", self.max_batch);
        }
        if !(0.0..=1000.0).contains(&self.max_batch_delay_ms) {
            bail!(
                "max_batch_delay_ms must be in [0, 1000], got {}",
                self.max_batch_delay_ms
            );
        }
        if self.idle_timeout_ms == 0 || self.frame_timeout_ms == 0 || self.max_connections_per_peer == 0 {
            bail!("idle_timeout_ms, frame_timeout_ms and max_connections_per_peer must be positive");
        }
        let advertised = std::iter::once(("selector_advertise".to_string(), &self.selector_advertise)).chain(
            self.endpoints()
                .into_iter()
                .map(|(name, e)| (format!("{name}.advertise"), &e.advertise)),
        );
        for (field, a) in advertised {
            // Peers dial this address: it needs a host and a real port.
            if let Some(a) = a.as_deref().filter(|a| {
                a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err() || p == "0")
            }) {
                bail!("{field} '{a}' is not an address peers can dial (host:port, port not 0)");
            }
        }
        for (field, e) in self.endpoints() {
            if e.keep_awake && e.cpus.is_empty() {
                bail!("{field}.keep_awake needs {field}.cpus: only pinned CPUs are kept awake");
            }
            if field != "base" && e.beside_cpu.is_some() {
                bail!("{field}.beside_cpu: only the base worker runs caches beside its model");
            }
        }
        // The frontend runs no model and the trainer trains on the CPU: a GPU named there would do nothing.
        for (field, e) in [
            ("frontend", Some(&self.frontend)),
            ("trainer", self.trainer.as_ref().map(|t| &t.endpoint)),
        ] {
            if let Some(e) = e.filter(|e| !e.device.is_cpu()) {
                bail!(
                    "{field}.device {}: only the base and cache workers run on a GPU; use cpu",
                    e.device
                );
            }
        }
        if self.base_in_frontend && self.base.metrics.is_some() {
            bail!("base.metrics: with base_in_frontend the base worker's metrics are served on frontend.metrics; remove base.metrics");
        }
        if self.base_in_frontend && !self.frontend.cpus.is_empty() && self.frontend.cpus != self.base.cpus {
            bail!(
                "frontend.cpus {:?}: with base_in_frontend the one process takes base.cpus ({:?}); leave frontend.cpus empty",
                self.frontend.cpus,
                self.base.cpus
            );
        }
        if self.mode == ServeMode::Distributed && self.caches.is_empty() {
            bail!("mode distributed needs at least one entry in caches");
        }
        if let Some(t) = &self.trainer {
            if self.mode == ServeMode::BaseOnly {
                bail!("trainer: online learning needs caches (mode inline or distributed)");
            }
            if t.buffer_mb.is_nan() || t.buffer_mb <= 0.0 || t.retrain_every == 0 || t.evidence == 0 {
                bail!("trainer: buffer_mb, evidence and retrain_every must be positive");
            }
            if t.error_target.is_some_and(|e| !(0.0..1.0).contains(&e)) {
                bail!("trainer: error_target must be in [0, 1)");
            }
        }
        Ok(())
    }

    /// Where online learning keeps its versions.
    pub fn state_dir(&self) -> Option<PathBuf> {
        let t = self.trainer.as_ref()?;
        Some(t.state_dir.clone().unwrap_or_else(|| self.plan.join("online")))
    }

    /// Connection limits of an internal service (base, cache, selector, trainer): the token applies.
    pub fn internal_limits(&self) -> crate::net::Limits {
        crate::net::Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            frame_timeout: std::time::Duration::from_millis(self.frame_timeout_ms),
            token: self.token.clone(),
            tls: self.tls_loaded.as_ref().map(|t| t.internal.clone()),
        }
    }

    /// Limits of the public `Gati` service: open to any Thrift client (over TLS if so configured).
    pub fn public_limits(&self) -> crate::net::Limits {
        crate::net::Limits {
            token: None,
            tls: self.tls_loaded.as_ref().and_then(|t| t.public.clone()),
            ..self.internal_limits()
        }
    }

    /// What a role presents when it dials another role's internal service.
    pub fn credentials(&self) -> crate::net::Credentials {
        crate::net::Credentials {
            token: self.token.clone(),
            tls: self.tls_loaded.as_ref().map(|t| t.client.clone()),
        }
    }

    /// The address of the cache worker serving a stage name.
    pub fn cache_for_layer(&self, layer: &str) -> Option<&str> {
        self.caches
            .iter()
            .find(|c| c.layers.iter().any(|l| l == layer))
            .map(|c| c.endpoint.address())
    }

    /// The cache workers' layers against the plan's: each names a layer the plan caches, and
    /// distributed, each plan layer is served by exactly one worker.
    pub fn check_layers(&self, plan: &gati_cache::plan::Plan) -> Result<()> {
        let planned = plan.cache_layers();
        for (i, c) in self.caches.iter().enumerate() {
            if let Some(l) = c.layers.iter().find(|l| !planned.iter().any(|(_, p)| p == *l)) {
                bail!(
                    "caches[{i}].layers: '{l}' has no cache in plan {} (its cache layers: {})",
                    self.plan.display(),
                    planned.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        if self.mode == ServeMode::Distributed {
            for (_, l) in &planned {
                let n = self.caches.iter().filter(|c| c.layers.contains(l)).count();
                if n != 1 {
                    bail!(
                        "caches: plan layer '{l}' is served by {n} cache workers (distributed mode needs exactly one)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the frontend holds `plan`'s memory cache (else the base worker or, distributed, a
    /// cache worker does).
    pub fn memory_at_frontend(&self, plan: &gati_cache::plan::Plan) -> bool {
        let Some(m) = plan.memory.as_ref().filter(|_| self.mode == ServeMode::Inline) else {
            return false;
        };
        self.memory_at_frontend.unwrap_or_else(|| {
            let prefix: f64 = plan.stage_ms.iter().take(m.spec.stage + 1).sum();
            prefix <= 0.05 * plan.stage_ms.iter().sum::<f64>()
        })
    }

    /// Entries of the frontend's exact-repeat cache for `plan` (0: off).
    pub fn exact_entries(&self, plan: &gati_cache::plan::Plan) -> usize {
        let auto = if plan.memory.is_some() && self.trainer.is_none() && self.mode != ServeMode::BaseOnly {
            4096
        } else {
            0
        };
        self.exact_cache_entries.unwrap_or(auto)
    }

    /// The address cache workers report to.
    pub fn selector_address(&self) -> &str {
        self.selector_advertise.as_deref().unwrap_or(&self.selector)
    }
}

/// Keys of `given` (a config as written) that `known` (the parsed config written back, which
/// names every field) lacks, as dotted paths (`caches[1].layer`).
pub fn unknown_keys(given: &serde_json::Value, known: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => g
            .iter()
            .flat_map(|(key, v)| {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_keys(v, kv, &path),
                    None => vec![path],
                }
            })
            .collect(),
        (Value::Array(g), Value::Array(k)) => g
            .iter()
            .zip(k)
            .enumerate()
            .flat_map(|(i, (gv, kv))| unknown_keys(gv, kv, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

/// Applies an endpoint's thread count, CPU pinning and `keep_awake` to this process.
pub fn apply_placement(e: &Endpoint) -> Result<()> {
    gati_core::set_threads(e.threads);
    if !e.cpus.is_empty() {
        gati_core::cpu::pin_current(&e.cpus)?;
    }
    if e.keep_awake {
        for &c in &e.cpus {
            std::thread::Builder::new()
                .name(format!("keep-awake-{c}"))
                .spawn(move || keep_awake(c))
                .context("starting a keep-awake thread")?;
        }
    }
    Ok(())
}

/// Spins on CPU `cpu` forever at `SCHED_IDLE` priority (see `Endpoint::keep_awake`).
fn keep_awake(cpu: usize) {
    let placed = gati_core::cpu::pin_current(&[cpu]).and_then(|_| gati_core::cpu::set_idle(0, true));
    if let Err(e) = placed {
        // Spinning at normal priority would take the CPU from the work it keeps warm.
        tracing::warn!(cpu, "keep_awake: not started: {e}");
        return;
    }
    loop {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let given = serde_json::json!({
            "plan": "p", "mode": "distributed", "selector": "f:7001",
            "frontend": {"listen": "0.0.0.0:7000"},
            "base": {"listen": "b:7002", "thread": 2},
            "caches": [{"listen": "c:7003", "layers": ["layer3.1"]}, {"listen": "c:7004", "layers": [], "layer": "x"}],
            "auth_token_fle": "/run/secret"
        });
        let c: Cluster = serde_json::from_value(given.clone()).unwrap();
        let mut unknown = unknown_keys(&given, &serde_json::to_value(&c).unwrap(), "");
        unknown.sort();
        assert_eq!(unknown, ["auth_token_fle", "base.thread", "caches[1].layer"]);
    }

    #[test]
    fn the_shipped_cluster_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for f in ["deploy/k8s/base/cluster.json", "deploy/cluster.example.json"] {
            let path = root.join(f);
            let c = Cluster::parse(&std::fs::read(&path).unwrap(), &path).unwrap_or_else(|e| panic!("{f}: {e:#}"));
            assert_eq!(c.mode, ServeMode::Distributed, "{f}");
        }
    }

    /// `Cluster::check` on an inline cluster with this `base` entry.
    fn check_with_base(base: serde_json::Value) -> Result<(), String> {
        let c: Cluster = serde_json::from_value(serde_json::json!({
            "plan": "p", "mode": "inline", "selector": "0.0.0.0:7001",
            "frontend": {"listen": "0.0.0.0:7000"}, "base": base,
        }))
        .unwrap();
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn an_advertised_address_needs_a_host_and_a_port() {
        let with = check_with_base;
        assert!(with(serde_json::json!({"listen": "0.0.0.0:7002", "advertise": "base:7002"})).is_ok());
        for bad in ["base", "base:0", ":7002", "base:port"] {
            let e = with(serde_json::json!({"listen": "0.0.0.0:7002", "advertise": bad})).unwrap_err();
            assert!(e.contains("base.advertise") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn only_pinned_cpus_are_kept_awake() {
        let with = check_with_base;
        assert!(with(serde_json::json!({"listen": "0.0.0.0:7002", "cpus": [0], "keep_awake": true})).is_ok());
        let e = with(serde_json::json!({"listen": "0.0.0.0:7002", "keep_awake": true})).unwrap_err();
        assert!(e.contains("base.keep_awake needs base.cpus"), "{e}");
    }

    #[test]
    fn a_base_worker_in_the_frontend_takes_the_base_entrys_placement_and_metrics() {
        let with = |frontend: serde_json::Value, base: serde_json::Value| {
            let c: Cluster = serde_json::from_value(serde_json::json!({
                "plan": "p", "mode": "inline", "selector": "0.0.0.0:7001", "base_in_frontend": true,
                "frontend": frontend, "base": base,
            }))
            .unwrap();
            c.check().map_err(|e| e.to_string())
        };
        let fe = serde_json::json!({"listen": "0.0.0.0:7000", "metrics": "0.0.0.0:9100"});
        assert!(with(
            fe.clone(),
            serde_json::json!({"listen": "0.0.0.0:7002", "cpus": [0, 1]})
        )
        .is_ok());
        let e = with(
            fe,
            serde_json::json!({"listen": "0.0.0.0:7002", "metrics": "0.0.0.0:9101"}),
        )
        .unwrap_err();
        assert!(e.starts_with("base.metrics:"), "{e}");
        let e = with(
            serde_json::json!({"listen": "0.0.0.0:7000", "cpus": [1]}),
            serde_json::json!({"listen": "0.0.0.0:7002", "cpus": [0]}),
        )
        .unwrap_err();
        assert!(
            e.starts_with("frontend.cpus [1]:") && e.contains("base.cpus ([0])"),
            "{e}"
        );
    }
}
