use super::data_args::load_split;
use anyhow::{anyhow, bail, Result};
use gati_bench::load::{drive, hit_rate_per_layer, Pace, Until};
use gati_core::stats::LatencyStats;
use gati_core::workload::{Request, Stream};
use gati_core::{paths, BaseModel};
use gati_rpc::TGatiSyncClient;
use gati_server::client::describe;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    endpoint: String,
    #[command(flatten)]
    tls: super::tls_args::ClientTls,
    /// Dataset folder (default: ../shared CIFAR-10)
    #[arg(long, env = "GATI_DATA")]
    data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    split: String,
    /// First N images of the split (class-balanced)
    #[arg(long)]
    limit: Option<usize>,
    /// Use the whole split instead of its evaluation half (odd positions)
    #[arg(long)]
    all: bool,
    /// Closed loop: this many clients, each sending its next request when the last returns
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Open loop: Poisson arrivals at this many requests per second (spread over --concurrency clients)
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests instead of --duration
    #[arg(long)]
    requests: Option<usize>,
    /// Report hit rate, latency and agreement per window of this many consecutive requests
    #[arg(long)]
    window: Option<usize>,
    /// Write every answered request (request index, ms, class, layer, version) as JSON lines here
    #[arg(long)]
    records: Option<PathBuf>,
    /// A plan directory: its base model answers the same images in-process, for agreement figures
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Send a workload stream instead of the images in order: iid, zipf[:s], working-set[:k[:every]], bursty-repeat[:r[:window]],
    /// door-camera[:people[:burst]]
    #[arg(long)]
    stream: Option<String>,
    /// Requests generated for --stream (cycled when the run is longer)
    #[arg(long, default_value_t = 10000)]
    stream_length: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    endpoint: String,
    model: String,
    mode: String,
    concurrency: usize,
    rate: Option<f64>,
    duration_s: f64,
    requests: usize,
    errors: BTreeMap<String, usize>,
    throughput_rps: f64,
    latency_ms: LatencyStats,
    hit_rate: f64,
    hit_rate_per_layer: BTreeMap<String, f64>,
    top1: f64,
    /// Fraction of answers equal to the base model's (needs --plan).
    agreement: Option<f64>,
    /// Hits per cache version.
    hits_per_version: BTreeMap<String, usize>,
    /// Of each version's hits, the fraction equal to the base model's answer (needs --plan).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    agreement_per_version: BTreeMap<String, f64>,
    /// Per --window consecutive requests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timeline: Vec<Window>,
}

#[derive(Serialize)]
struct Window {
    first_request: usize,
    requests: usize,
    hit_rate: f64,
    mean_ms: f64,
    agreement: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let frontend = a.tls.frontend(&a.endpoint)?;
    let mut probe = frontend
        .connect(Duration::from_secs(10))
        .map_err(|e| anyhow!("connecting to {}: {e}", a.endpoint))?;
    let info = probe
        .models()
        .map_err(|e| anyhow!("models(): {}", describe(&e)))?
        .remove(0);
    let model = BaseModel::new(&info.name, tch::Device::Cpu)?;
    let dir = paths::data_dir_for(&info.name, a.data.as_deref())?;
    let mut ds = load_split(&model, &dir, &a.split, a.limit)?;
    if !a.all {
        let (_, ei) = gati_cache::split::calibration_evaluation(&ds.labels);
        ds = ds.subset(&ei);
    }
    if ds.is_empty() {
        bail!("no images to send");
    }
    let requests = match &a.stream {
        Some(spec) => Stream::parse(spec)?.generate(&ds.labels, a.stream_length, a.seed),
        None => (0..ds.len()).map(Request::plain).collect(),
    };
    let sent = gati_bench::inputs::prepare(&ds, requests)?;
    let labels: &[i64] = &sent.labels;
    // The base model's answer to exactly the pixels each request carries: a camera frame or a
    // noisy repeat is not the image it came from, and the base model may answer it differently.
    let base_pred = match &a.plan {
        Some(p) => {
            let plan = gati_cache::plan::Plan::load(p)?;
            let m = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
            let _g = tch::no_grad_guard();
            let preds: Vec<i64> = sent
                .pixels
                .chunks(256)
                .flat_map(|c| gati_core::eval::argmax(&m.forward(&m.preprocess(&tch::Tensor::cat(c, 0)))))
                .collect();
            Some(preds)
        }
        None => None,
    };
    let pace = match a.rate {
        Some(rate) => Pace::Open {
            rate,
            clients: a.concurrency,
        },
        None => Pace::Closed {
            concurrency: a.concurrency,
        },
    };
    let load = drive(
        &frontend,
        &info.name,
        sent.wire.clone(),
        pace,
        match a.requests {
            Some(n) => Until::Requests(n),
            None => Until::Duration(Duration::from_secs_f64(a.duration)),
        },
        a.seed,
    );
    let elapsed = load.elapsed_s;
    let recs = &load.records;
    let n = recs.len().max(1) as f64;
    let m = labels.len();
    let per_layer = hit_rate_per_layer(recs);
    let agrees = |r: &gati_bench::load::Record| base_pred.as_ref().map(|b| r.class == b[r.req % m]);
    let mut ordered: Vec<&gati_bench::load::Record> = recs.iter().collect();
    ordered.sort_by_key(|r| r.req);
    let timeline = match a.window {
        Some(w) if w > 0 => ordered
            .chunks(w)
            .map(|c| Window {
                first_request: c[0].req,
                requests: c.len(),
                hit_rate: c.iter().filter(|r| r.layer.is_some()).count() as f64 / c.len() as f64,
                mean_ms: c.iter().map(|r| r.ms).sum::<f64>() / c.len() as f64,
                agreement: base_pred
                    .as_ref()
                    .map(|_| c.iter().filter(|r| agrees(r) == Some(true)).count() as f64 / c.len() as f64),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut hits_per_version = BTreeMap::new();
    let mut agreeing = BTreeMap::<String, usize>::new();
    for r in recs.iter().filter(|r| r.layer.is_some()) {
        let v = r.version.clone().unwrap_or_else(|| "?".into());
        *agreeing.entry(v.clone()).or_insert(0) += (agrees(r) == Some(true)) as usize;
        *hits_per_version.entry(v).or_insert(0) += 1;
    }
    let agreement_per_version = match base_pred {
        Some(_) => agreeing
            .iter()
            .map(|(v, &a)| (v.clone(), a as f64 / hits_per_version[v] as f64))
            .collect(),
        None => BTreeMap::new(),
    };
    if let Some(path) = &a.records {
        let mut out = String::new();
        for r in &ordered {
            out += &serde_json::to_string(r)?;
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    }
    let report = Report {
        endpoint: a.endpoint,
        model: info.name,
        mode: info.mode,
        concurrency: a.concurrency,
        rate: a.rate,
        duration_s: elapsed,
        requests: recs.len(),
        errors: load.errors.clone(),
        throughput_rps: recs.len() as f64 / elapsed,
        latency_ms: LatencyStats::from_samples(&recs.iter().map(|r| r.ms).collect::<Vec<_>>()),
        hit_rate: per_layer.values().sum::<f64>().max(0.0),
        hit_rate_per_layer: per_layer,
        top1: 100.0 * recs.iter().filter(|r| r.class == labels[r.req % m]).count() as f64 / n,
        // Noisy recurrences are compared with the base model's answer on the clean image.
        agreement: base_pred
            .as_ref()
            .map(|_| recs.iter().filter(|r| agrees(r) == Some(true)).count() as f64 / n),
        hits_per_version,
        agreement_per_version,
        timeline,
    };
    if a.json {
        return super::print_json(&report);
    }
    let l = &report.latency_ms;
    println!(
        "{} requests in {:.1} s ({:.1} req/s), {} errors; latency ms mean {:.3} p50 {:.3} p95 {:.3} p99 {:.3}",
        report.requests,
        elapsed,
        report.throughput_rps,
        report.errors.values().sum::<usize>(),
        l.mean,
        l.p50,
        l.p95,
        l.p99
    );
    println!("hit rate {:.1}%; top-1 {:.2}%", 100.0 * report.hit_rate, report.top1);
    for (layer, r) in &report.hit_rate_per_layer {
        println!("  {layer:<10} {:.1}%", 100.0 * r);
    }
    if let Some(ag) = report.agreement {
        println!("agreement with the base model {:.2}%", 100.0 * ag);
    }
    Ok(())
}
