//! Throughput and latency by batch size: the base model alone against gati, in-process (one
//! batched pass; samples leave at their own exits) and through the frontend's dynamic batcher
//! (as many closed-loop clients as the batch holds), measured side by side in one run with the
//! runs interleaved, repeated, reported as medians with their spread.

use crate::inputs;
use crate::load::{drive, Pace, Until};
use crate::measure::LocalCluster;
use crate::report::Figure;
use anyhow::Result;
use gati_cache::runtime::EarlyExit;
use gati_core::data::Dataset;
use gati_core::workload::Request;
use gati_server::client::Frontend;
use gati_server::config::ServeMode;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

pub struct Options {
    pub plan: PathBuf,
    pub batch_sizes: Vec<usize>,
    /// Requests per run.
    pub requests: usize,
    pub repeat: usize,
    /// The batcher's wait for a batch to fill.
    pub max_batch_delay_ms: f64,
    pub exe: PathBuf,
}

/// One way of serving at one batch size, over the repeats.
#[derive(Debug, Serialize)]
pub struct Cell {
    pub throughput_rps: Figure,
    pub p50_ms: Figure,
    pub p99_ms: Figure,
    pub hit_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub batch: usize,
    pub base_in_process: Cell,
    pub gati_in_process: Cell,
    /// gati's throughput over base-only's, per repeat (same run, same cores).
    pub in_process_ratio: Figure,
    pub base_thrift: Cell,
    pub gati_thrift: Cell,
    pub thrift_ratio: Figure,
}

#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub model: String,
    pub plan: PathBuf,
    pub requests: usize,
    pub repeat: usize,
    pub max_batch_delay_ms: f64,
    pub rows: Vec<Row>,
}

/// What one run measured: per-request latencies, elapsed time, hits.
struct Timed {
    ms: Vec<f64>,
    elapsed_s: f64,
    hits: usize,
}

fn cell(runs: &[Timed]) -> Cell {
    let pct = |t: &Timed, q: f64| {
        let mut v = t.ms.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    Cell {
        throughput_rps: Figure::of(&runs.iter().map(|t| t.ms.len() as f64 / t.elapsed_s).collect::<Vec<_>>()),
        p50_ms: Figure::of(&runs.iter().map(|t| pct(t, 0.5)).collect::<Vec<_>>()),
        p99_ms: Figure::of(&runs.iter().map(|t| pct(t, 0.99)).collect::<Vec<_>>()),
        hit_rate: runs
            .iter()
            .map(|t| t.hits as f64 / t.ms.len().max(1) as f64)
            .sum::<f64>()
            / runs.len().max(1) as f64,
    }
}

fn ratio(a: &[Timed], b: &[Timed]) -> Figure {
    let rps = |t: &Timed| t.ms.len() as f64 / t.elapsed_s;
    Figure::of(&a.iter().zip(b).map(|(a, b)| rps(a) / rps(b)).collect::<Vec<_>>())
}

/// In-process: the stream in batches of `b`; every request in a batch waits for the whole batch.
fn in_process(xs: &Tensor, b: usize, mut run: impl FnMut(&Tensor) -> usize) -> Timed {
    let n = xs.size()[0] as usize;
    let (mut ms, mut hits) = (Vec::with_capacity(n), 0);
    let start = Instant::now();
    for s in (0..n).step_by(b) {
        let k = b.min(n - s);
        let t = Instant::now();
        hits += run(&xs.narrow(0, s as i64, k as i64));
        ms.extend(std::iter::repeat_n(t.elapsed().as_secs_f64() * 1e3, k));
    }
    Timed {
        ms,
        elapsed_s: start.elapsed().as_secs_f64(),
        hits,
    }
}

fn thrift_run(c: &LocalCluster, p: &inputs::Prepared, clients: usize) -> Timed {
    let load = drive(
        &Frontend::of(&c.cluster),
        &c.model,
        p.wire.clone(),
        Pace::Closed { concurrency: clients },
        Until::Requests(p.wire.len()),
        0,
    );
    Timed {
        ms: load.records.iter().map(|r| r.ms).collect(),
        elapsed_s: load.elapsed_s,
        hits: load.records.iter().filter(|r| r.layer.is_some()).count(),
    }
}

pub fn run(o: &Options, data: &Dataset) -> Result<BatchReport> {
    let (plan, ee) = EarlyExit::load(&o.plan)?;
    gati_core::set_threads(1);
    let _g = tch::no_grad_guard();
    let n = o.requests.min(data.len());
    let requests: Vec<Request> = (0..n).map(Request::plain).collect();
    let prepared = inputs::prepare(data, requests)?;
    let xs = ee.model.preprocess(&Tensor::cat(&prepared.pixels, 0));
    let progress = gati_core::progress::bar((o.batch_sizes.len() * o.repeat) as u64, "bench-batch");
    let mut rows = Vec::new();
    for &b in &o.batch_sizes {
        let start = |mode| LocalCluster::start_batching(&o.exe, &o.plan, mode, b, o.max_batch_delay_ms);
        let (base_c, gati_c) = (start(ServeMode::BaseOnly)?, start(ServeMode::Inline)?);
        // Closed-loop clients: enough to fill a batch, and at least two (saturation).
        let clients = b.max(2);
        let mut runs: [Vec<Timed>; 4] = Default::default();
        for _ in 0..o.repeat {
            runs[0].push(in_process(&xs, b, |x| {
                let _ = ee.model.forward(x);
                0
            }));
            runs[1].push(in_process(&xs, b, |x| {
                ee.infer_batch(x)
                    .iter()
                    .filter(|a| a.exit != gati_cache::runtime::Exit::Base)
                    .count()
            }));
            runs[2].push(thrift_run(&base_c, &prepared, clients));
            runs[3].push(thrift_run(&gati_c, &prepared, clients));
            progress.inc(1);
        }
        base_c.stop();
        gati_c.stop();
        let [base_ip, gati_ip, base_t, gati_t] = runs;
        rows.push(Row {
            batch: b,
            in_process_ratio: ratio(&gati_ip, &base_ip),
            thrift_ratio: ratio(&gati_t, &base_t),
            base_in_process: cell(&base_ip),
            gati_in_process: cell(&gati_ip),
            base_thrift: cell(&base_t),
            gati_thrift: cell(&gati_t),
        });
    }
    progress.finish_and_clear();
    Ok(BatchReport {
        model: plan.model,
        plan: o.plan.clone(),
        requests: n,
        repeat: o.repeat,
        max_batch_delay_ms: o.max_batch_delay_ms,
        rows,
    })
}

/// The report as a Markdown table.
pub fn markdown(r: &BatchReport) -> String {
    let f = |x: &Figure| format!("{:.0}", x.median);
    let ms = |c: &Cell| format!("{:.1} / {:.1}", c.p50_ms.median, c.p99_ms.median);
    let mut s = format!(
        "{} ({} requests, {} repeats, batcher wait {} ms): throughput req/s, latency p50 / p99 ms\n\n\
         | batch | base in-process | gati in-process | ratio | base p50/p99 | gati p50/p99 | base Thrift | gati Thrift | ratio | base p50/p99 | gati p50/p99 | gati hits |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        r.model, r.requests, r.repeat, r.max_batch_delay_ms
    );
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {} | {:.2}x ({:.2}–{:.2}) | {} | {} | {} | {} | {:.2}x ({:.2}–{:.2}) | {} | {} | {:.1}% |\n",
            row.batch,
            f(&row.base_in_process.throughput_rps),
            f(&row.gati_in_process.throughput_rps),
            row.in_process_ratio.median,
            row.in_process_ratio.min,
            row.in_process_ratio.max,
            ms(&row.base_in_process),
            ms(&row.gati_in_process),
            f(&row.base_thrift.throughput_rps),
            f(&row.gati_thrift.throughput_rps),
            row.thrift_ratio.median,
            row.thrift_ratio.min,
            row.thrift_ratio.max,
            ms(&row.base_thrift),
            ms(&row.gati_thrift),
            100.0 * row.gati_thrift.hit_rate,
        );
    }
    s
}

/// The evaluation half of the test split (what plans are evaluated on).
pub fn evaluation_data(plan_dir: &Path, data: Option<&Path>) -> Result<Dataset> {
    let plan = gati_cache::plan::Plan::load(plan_dir)?;
    let dir = gati_core::paths::data_dir_for(&plan.model, data)?;
    let hw = {
        let m = gati_core::BaseModel::new(&plan.model, tch::Device::Cpu)?;
        let s = m.spec().input_shape;
        (s[1], s[2])
    };
    let test = gati_core::data::load(&dir, "test", plan.test_limit, hw)?;
    let (_, eval) = gati_cache::split::calibration_evaluation(&test.labels);
    Ok(test.subset(&eval))
}
