use super::tls_args::ClientTls;
use anyhow::{anyhow, Result};
use gati_rpc::TGatiSyncClient;
use gati_server::client::{describe, image_request, Client};
use std::path::PathBuf;
use std::time::Duration;

fn connect(endpoint: &str, tls: &ClientTls) -> Result<Client> {
    tls.frontend(endpoint)?
        .connect(Duration::from_secs(10))
        .map_err(|e| anyhow!("connecting to {endpoint}: {e}"))
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Classify image files (JPEG/PNG of the model's input size)
    Infer {
        #[arg(long, default_value = "127.0.0.1:7000")]
        endpoint: String,
        #[command(flatten)]
        tls: ClientTls,
        /// Model name (default: the one the frontend serves)
        #[arg(long)]
        model: Option<String>,
        images: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The frontend's models, health and stats
    Info {
        #[arg(long, default_value = "127.0.0.1:7000")]
        endpoint: String,
        #[command(flatten)]
        tls: ClientTls,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Infer {
            endpoint,
            tls,
            model,
            images,
            json,
        } => {
            let mut c = connect(&endpoint, &tls)?;
            let model = match model {
                Some(m) => m,
                None => c.models().map_err(|e| anyhow!("models(): {}", describe(&e)))?[0]
                    .name
                    .clone(),
            };
            let mut out = Vec::new();
            for img in &images {
                let bytes = std::fs::read(img).map_err(|e| anyhow!("reading {}: {e}", img.display()))?;
                let r = c
                    .infer(image_request(&model, bytes))
                    .map_err(|e| anyhow!("{}: {}", img.display(), describe(&e)))?;
                if !json {
                    let from = match &r.cache_layer {
                        Some(l) => format!("cache at {l}"),
                        None => "base model".into(),
                    };
                    println!(
                        "{}: {} ({:.1}%) from {from} in {:.2} ms",
                        img.display(),
                        r.class_name,
                        100.0 * r.confidence.0,
                        r.timing.total_ms.0
                    );
                }
                out.push(serde_json::json!({
                    "image": img, "class_index": r.class_index, "class_name": r.class_name,
                    "confidence": r.confidence.0, "source": if r.cache_layer.is_some() { "cache" } else { "base" },
                    "cache_layer": r.cache_layer, "total_ms": r.timing.total_ms.0, "request_id": r.request_id,
                }));
            }
            if json {
                super::print_json(&serde_json::json!({ "model": model, "results": out }))?;
            }
            Ok(())
        }
        What::Info { endpoint, tls } => {
            let mut c = connect(&endpoint, &tls)?;
            let m = c.models().map_err(|e| anyhow!(describe(&e)))?;
            let h = c.health().map_err(|e| anyhow!(describe(&e)))?;
            let s = c.stats().map_err(|e| anyhow!(describe(&e)))?;
            super::print_json(&serde_json::json!({
                "models": m.iter().map(|m| serde_json::json!({"name": m.name, "mode": m.mode, "cache_layers": m.cache_layers, "budget": m.budget.0})).collect::<Vec<_>>(),
                "health": {"ok": h.ok, "workers": h.workers},
                "stats": {"requests": s.requests, "hits": s.hits, "misses": s.misses, "errors": s.errors, "hits_per_layer": s.hits_per_layer, "in_flight": s.in_flight},
            }))
        }
    }
}
