use super::data_args::load_split;
use anyhow::{anyhow, bail, Result};
use gati_core::stats::LatencyStats;
use gati_core::{data, paths, BaseModel};
use gati_rpc::{InferRequest, Input, TGatiSyncClient};
use gati_server::client::{connect, describe};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    endpoint: String,
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
    /// A plan directory: its base model answers the same images in-process, for agreement figures
    #[arg(long)]
    plan: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

struct Record {
    index: usize,
    ms: f64,
    class: i64,
    layer: Option<String>,
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
}

pub fn run(a: Args) -> Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let mut probe =
        connect(&a.endpoint, Duration::from_secs(10)).map_err(|e| anyhow!("connecting to {}: {e}", a.endpoint))?;
    let info = probe
        .models()
        .map_err(|e| anyhow!("models(): {}", describe(&e)))?
        .remove(0);
    let model = BaseModel::new(&info.name, tch::Device::Cpu)?;
    let dir = paths::data_dir(a.data.as_deref())?;
    let mut ds = load_split(&model, &dir, &a.split, a.limit)?;
    if !a.all {
        let (_, ei) = gati_cache::split::calibration_evaluation(&ds.labels);
        ds = ds.subset(&ei);
    }
    if ds.is_empty() {
        bail!("no images to send");
    }
    let inputs: Vec<Input> = (0..ds.len())
        .map(|i| input_for(&ds, &model, i))
        .collect::<Result<_>>()?;
    let base_pred = match &a.plan {
        Some(p) => {
            let plan = gati_cache::plan::Plan::load(p)?;
            let m = BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu)?;
            Some(gati_core::eval::argmax(&gati_core::eval::predict(&m, &ds, 256)))
        }
        None => None,
    };
    let inputs = Arc::new(inputs);
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let per_client_rate = a.rate.map(|r| r / a.concurrency as f64);
    let handles: Vec<_> = (0..a.concurrency)
        .map(|w| {
            let (inputs, records, errors, next) = (inputs.clone(), records.clone(), errors.clone(), next.clone());
            let (endpoint, name, seed) = (a.endpoint.clone(), info.name.clone(), a.seed + w as u64);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut client = connect(&endpoint, Duration::from_secs(30)).ok();
                let mut due = Instant::now();
                while Instant::now() < end {
                    if let Some(r) = per_client_rate {
                        // Poisson arrivals; latency counts from the scheduled time (no coordinated omission).
                        due += Duration::from_secs_f64(-(1.0 - rng.gen::<f64>()).ln() / r);
                        if due >= end {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    } else {
                        due = Instant::now();
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) % inputs.len();
                    let req = InferRequest {
                        model: name.clone(),
                        input: inputs[i].clone(),
                        request_id: None,
                        deadline_ms: None,
                        top_k: Some(1),
                    };
                    let Some(c) = client.as_mut() else {
                        *errors.lock().unwrap().entry("connect".into()).or_default() += 1;
                        client = connect(&endpoint, Duration::from_secs(30)).ok();
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    match c.infer(req) {
                        Ok(r) => records.lock().unwrap().push(Record {
                            index: i,
                            ms: due.elapsed().as_secs_f64() * 1e3,
                            class: r.class_index as i64,
                            layer: r.cache_layer,
                        }),
                        Err(e) => {
                            let kind = describe(&e).split(':').next().unwrap_or("error").to_string();
                            *errors.lock().unwrap().entry(kind).or_default() += 1;
                            if !matches!(e, thrift::Error::User(_)) {
                                client = None;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let recs = records.lock().unwrap();
    let n = recs.len().max(1) as f64;
    let mut per_layer = BTreeMap::new();
    for r in recs.iter() {
        if let Some(l) = &r.layer {
            *per_layer.entry(l.clone()).or_insert(0.0) += 1.0 / n;
        }
    }
    let report = Report {
        endpoint: a.endpoint,
        model: info.name,
        mode: info.mode,
        concurrency: a.concurrency,
        rate: a.rate,
        duration_s: elapsed,
        requests: recs.len(),
        errors: errors.lock().unwrap().clone(),
        throughput_rps: recs.len() as f64 / elapsed,
        latency_ms: LatencyStats::from_samples(&recs.iter().map(|r| r.ms).collect::<Vec<_>>()),
        hit_rate: per_layer.values().sum(),
        hit_rate_per_layer: per_layer,
        top1: 100.0 * recs.iter().filter(|r| r.class == ds.labels[r.index]).count() as f64 / n,
        agreement: base_pred.map(|b| recs.iter().filter(|r| r.class == b[r.index]).count() as f64 / n),
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

/// The encoded image file when there is one (what clients send), else the normalised tensor.
fn input_for(ds: &data::Dataset, model: &BaseModel, i: usize) -> Result<Input> {
    let src = std::path::Path::new(&ds.sources[i]);
    if src.is_file() {
        return Ok(Input::Image(std::fs::read(src)?));
    }
    let x = model.preprocess(&ds.pixel_range(i, i + 1));
    Ok(Input::Tensor(gati_rpc::convert::tensor_to_wire(&x)))
}
