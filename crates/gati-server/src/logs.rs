//! Structured logs on stderr, one line per event with its time, level and fields. `GATI_LOG` filters
//! them (`info` by default; e.g. `warn`, `gati_server::frontend=debug`); `GATI_LOG_FORMAT=json`
//! writes one JSON object per line for log pipelines.

use tracing_subscriber::EnvFilter;

/// Installs the process's logger (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_env("GATI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match std::env::var("GATI_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).try_init(),
        _ => logs.with_ansi(false).try_init(),
    };
}
