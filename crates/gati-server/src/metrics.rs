//! Prometheus metrics over HTTP (`/metrics`, `/health`, `/ready`), one registry per process.

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

/// Registers `metric` in `registry` and hands it back.
pub fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> anyhow::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
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
