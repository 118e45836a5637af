//! Prometheus metrics over HTTP (`/metrics`, `/health`, `/ready`), one registry per process.

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

/// Registers `metric` in `registry` and hands it back.
pub fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> anyhow::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// What every role exports besides its own figures: `gati_build_info{version, role}` (always 1)
/// and the process's CPU, memory, file descriptors and start time (`process_*`).
pub fn register_process(registry: &Registry, role: &str) -> anyhow::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("gati_build_info", "The gati build serving this role (always 1)"),
        &["version", "role"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), role]).set(1);
    registry.register(Box::new(info))?;
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok(())
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Whether a process can take traffic now (`/ready`).
pub type Readiness = Box<dyn Fn() -> bool + Send>;

/// Serves `registry` at `addr` on a background thread. `/health` answers `ok` while the process
/// runs (liveness); `/ready` answers 200 when `ready()` holds, else 503 (readiness: a frontend whose
/// base worker is unreachable should get no traffic).
pub fn serve(addr: &str, registry: Registry, ready: Readiness) -> anyhow::Result<String> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("metrics on {addr}: {e}"))?;
    let local = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let encoder = TextEncoder::new();
            let (code, body, content_type) = match req.url() {
                "/metrics" => {
                    let mut buf = Vec::new();
                    let _ = encoder.encode(&registry.gather(), &mut buf);
                    // Prometheus 3 refuses a scrape without a Content-Type.
                    (200, buf, encoder.format_type().to_string())
                }
                "/health" => (200, b"ok\n".to_vec(), PLAIN.to_string()),
                "/ready" if ready() => (200, b"ready\n".to_vec(), PLAIN.to_string()),
                "/ready" => (503, b"not ready\n".to_vec(), PLAIN.to_string()),
                _ => (404, b"not found\n".to_vec(), PLAIN.to_string()),
            };
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).expect("a valid header");
            let _ = req.respond(
                tiny_http::Response::from_data(body)
                    .with_status_code(code)
                    .with_header(header),
            );
        }
    });
    Ok(local)
}

/// The memory cache's figures, read from its counters at each scrape (`gati_memory_*`).
pub struct MemoryCollector {
    cache: std::sync::Arc<gati_cache::memory::MemoryCache>,
    gauges: prometheus::IntGaugeVec,
    counters: prometheus::IntCounterVec,
    lookup_seconds: prometheus::Counter,
    /// One scrape at a time rewrites the counters.
    scrape: std::sync::Mutex<()>,
}

impl MemoryCollector {
    pub fn new(cache: std::sync::Arc<gati_cache::memory::MemoryCache>) -> anyhow::Result<Self> {
        use prometheus::Opts;
        let layer = cache.spec.layer.clone();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("layer", layer.clone());
        Ok(Self {
            gauges: prometheus::IntGaugeVec::new(
                opts(
                    "gati_memory",
                    "Memory cache store: entries, bytes held and byte limit, whether indexed, and the \
                     confidence a stored answer needs (permille; the guard raises it)",
                ),
                &["figure"],
            )?,
            counters: prometheus::IntCounterVec::new(
                opts(
                    "gati_memory_events_total",
                    "Memory cache events: lookups, hits, inserts (base answers stored), evictions, and \
                     audits of hits (sampled full base runs) with their disagreements",
                ),
                &["event"],
            )?,
            lookup_seconds: prometheus::Counter::with_opts(opts(
                "gati_memory_lookup_seconds_total",
                "Time spent in memory cache lookups",
            ))?,
            cache,
            scrape: std::sync::Mutex::new(()),
        })
    }
}

impl Collector for MemoryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.gauges.desc();
        d.extend(self.counters.desc());
        d.extend(self.lookup_seconds.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let _one = crate::resources::lock(&self.scrape);
        let c = &self.cache;
        for (figure, v) in [
            ("entries", c.len() as i64),
            ("bytes", c.bytes() as i64),
            ("limit_bytes", c.spec.max_bytes as i64),
            ("indexed", c.indexed() as i64),
            ("min_confidence_permille", (c.min_confidence() * 1000.0).round() as i64),
        ] {
            self.gauges.with_label_values(&[figure]).set(v);
        }
        let s = &c.stats;
        for (event, total) in [
            ("lookup", s.lookups.load(Relaxed)),
            ("skipped", s.skipped.load(Relaxed)),
            ("hit", s.hits.load(Relaxed)),
            ("insert", s.inserts.load(Relaxed)),
            ("eviction", s.evictions.load(Relaxed)),
            ("audit", s.audits.load(Relaxed)),
            ("audit_disagreement", s.audit_disagreements.load(Relaxed)),
        ] {
            let m = self.counters.with_label_values(&[event]);
            m.inc_by(total.saturating_sub(m.get()));
        }
        let secs = s.lookup_ns.load(Relaxed) as f64 * 1e-9;
        self.lookup_seconds.inc_by((secs - self.lookup_seconds.get()).max(0.0));
        let mut out = self.gauges.collect();
        out.extend(self.counters.collect());
        out.extend(self.lookup_seconds.collect());
        out
    }
}

/// One audited hit at `layer`: did the base model give the same class
/// (`gati_hit_agreement_total{layer, agree}`)?
pub fn count_agreement(agreement: &prometheus::IntCounterVec, layer: &str, agreed: bool) {
    agreement
        .with_label_values(&[layer, if agreed { "yes" } else { "no" }])
        .inc();
}
