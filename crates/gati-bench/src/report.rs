//! The benchmark report: every run's figures, their medians with min–max spread, and the
//! markdown rendering of it all.

use crate::load::Record;
use crate::measure::{Config, Run};
use gati_core::stats::LatencyStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The median of a figure over repeats, with its spread.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    pub fn of(xs: &[f64]) -> Self {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// One run of one configuration over one stream.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub config: Config,
    pub repeat: usize,
    pub requests: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, usize>,
    pub latency_ms: LatencyStats,
    pub throughput_rps: f64,
    /// Ground-truth top-1, in percent.
    pub top1: f64,
    /// Fraction of answers that differ from the base model's (in-process, batch 1) on the same request.
    pub fidelity_loss: f64,
    pub hits: usize,
    pub misses: usize,
    pub hits_per_layer: BTreeMap<String, usize>,
    pub cpu_ms_per_request: f64,
    /// Per-request latencies, for the CDF plots (records.jsonl has them on disk).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

impl RunFigures {
    pub fn new(config: Config, repeat: usize, run: &Run, labels: &[i64], reference: &[i64]) -> Self {
        let recs = &run.load.records;
        let n = recs.len().max(1) as f64;
        let mut hits_per_layer = BTreeMap::new();
        for r in recs {
            if let Some(l) = &r.layer {
                *hits_per_layer.entry(l.clone()).or_insert(0) += 1;
            }
        }
        let hits: usize = hits_per_layer.values().sum();
        Self {
            config,
            repeat,
            requests: recs.len(),
            failed: run.load.failed(),
            errors: run.load.errors.clone(),
            latency_ms: LatencyStats::from_samples(&recs.iter().map(|r| r.ms).collect::<Vec<_>>()),
            throughput_rps: run.saturation_rps,
            top1: 100.0 * recs.iter().filter(|r| r.class == labels[r.req]).count() as f64 / n,
            fidelity_loss: disagreement(recs, reference),
            hits,
            misses: recs.len() - hits,
            hits_per_layer,
            cpu_ms_per_request: 1e3 * run.cpu_s / n,
            samples_ms: recs.iter().map(|r| r.ms).collect(),
        }
    }
}

/// Fraction of `records` whose class differs from `reference[req]`.
pub fn disagreement(records: &[Record], reference: &[i64]) -> f64 {
    let differ = records.iter().filter(|r| r.class != reference[r.req]).count();
    differ as f64 / records.len().max(1) as f64
}

/// Medians over repeats for one configuration on one stream.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    pub config: Config,
    pub name: &'static str,
    pub mean_ms: Figure,
    pub p50_ms: Figure,
    pub p95_ms: Figure,
    pub p99_ms: Figure,
    pub throughput_rps: Figure,
    pub top1: Figure,
    pub fidelity_loss: Figure,
    pub hit_rate: Figure,
    /// Median share of requests each layer answered.
    pub hit_rate_per_layer: BTreeMap<String, f64>,
    pub cpu_ms_per_request: Figure,
    pub failed: usize,
    /// Mean-latency speed-up over the base-only configuration on the same path, per repeat.
    pub speedup: Figure,
    /// p99 of this configuration over the baseline's p99, per repeat.
    pub p99_ratio: Figure,
    pub throughput_ratio: Figure,
}

pub fn summarise(config: Config, runs: &[RunFigures]) -> ConfigSummary {
    let mine: Vec<&RunFigures> = runs.iter().filter(|r| r.config == config).collect();
    let fig = |f: &dyn Fn(&RunFigures) -> f64| Figure::of(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    let base = config.baseline();
    let ratio = |f: &dyn Fn(&RunFigures, &RunFigures) -> f64| {
        let xs: Vec<f64> = mine
            .iter()
            .filter_map(|r| {
                let b = runs.iter().find(|b| b.config == base && b.repeat == r.repeat)?;
                Some(f(r, b))
            })
            .collect();
        Figure::of(&xs)
    };
    let mut layers: Vec<String> = mine.iter().flat_map(|r| r.hits_per_layer.keys().cloned()).collect();
    layers.sort();
    layers.dedup();
    let hit_rate_per_layer = layers
        .into_iter()
        .map(|l| {
            let f = fig(&|r| *r.hits_per_layer.get(&l).unwrap_or(&0) as f64 / r.requests.max(1) as f64);
            (l, f.median)
        })
        .collect();
    ConfigSummary {
        config,
        name: config.name(),
        mean_ms: fig(&|r| r.latency_ms.mean),
        p50_ms: fig(&|r| r.latency_ms.p50),
        p95_ms: fig(&|r| r.latency_ms.p95),
        p99_ms: fig(&|r| r.latency_ms.p99),
        throughput_rps: fig(&|r| r.throughput_rps),
        top1: fig(&|r| r.top1),
        fidelity_loss: fig(&|r| r.fidelity_loss),
        hit_rate: fig(&|r| r.hits as f64 / r.requests.max(1) as f64),
        hit_rate_per_layer,
        cpu_ms_per_request: fig(&|r| r.cpu_ms_per_request),
        failed: mine.iter().map(|r| r.failed).sum(),
        speedup: ratio(&|r, b| b.latency_ms.mean / r.latency_ms.mean),
        p99_ratio: ratio(&|r, b| r.latency_ms.p99 / b.latency_ms.p99),
        throughput_ratio: ratio(&|r, b| r.throughput_rps / b.throughput_rps),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub stream: String,
    pub requests: usize,
    /// Speed-up of the oracle (earliest agreeing candidate cache) on this stream's images, from the
    /// recorded outcomes and planned costs; `None` without the plan's candidates.
    pub oracle_speedup: Option<f64>,
    pub configs: Vec<ConfigSummary>,
    pub runs: Vec<RunFigures>,
}

/// One budget of the sweep: the plan re-made at that budget, served through Thrift.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub budget: f64,
    pub plan_dir: String,
    pub caches: Vec<String>,
    pub expected_speedup: f64,
    pub expected_fidelity_loss: f64,
    pub fidelity_loss: Figure,
    pub hit_rate: Figure,
    pub mean_ms: Figure,
    /// Against Thrift base-only in the same repeat.
    pub speedup: Figure,
    pub runs: Vec<RunFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub plan: String,
    pub plan_mode: String,
    pub budget: f64,
    pub caches: Vec<String>,
    pub evaluation_images: usize,
    pub streams: Vec<StreamReport>,
    pub sweep_mode: String,
    pub sweep: Vec<SweepPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            memory_gib: kb / 1048576.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command_line: String,
    pub git_commit: Option<String>,
    pub started: String,
    pub seconds: f64,
    pub machine: Machine,
    pub requests_per_run: usize,
    pub repeat: usize,
    pub saturation_clients: usize,
    pub pinned: bool,
    /// The base workers' CPUs kept busy while they wait (`gati up --keep-awake`).
    #[serde(default)]
    pub keep_awake: bool,
    pub models: Vec<ModelReport>,
    /// Plot files written beside the report (relative to the report folder).
    pub plots: Vec<String>,
    /// Why plots are missing, if they are.
    pub plot_error: Option<String>,
}

fn pct(f: &Figure) -> String {
    format!("{:.2}%", 100.0 * f.median)
}

fn spread(f: &Figure, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", f.median, f.min, f.max, d = digits)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# gati benchmark\n");
    let _ = writeln!(
        s,
        "`{}`\n\ncommit {}, {} on {} ({} CPUs, {:.0} GiB, Linux {}); {} requests per run, median of {} runs (min–max), \
         runs of all configurations interleaved; saturation with {} closed-loop clients; workers {}.\n",
        r.command_line,
        r.git_commit.as_deref().unwrap_or("unknown"),
        r.started,
        r.machine.cpu_model,
        r.machine.cpus,
        r.machine.memory_gib,
        r.machine.kernel,
        r.requests_per_run,
        r.repeat,
        r.saturation_clients,
        match (r.pinned, r.keep_awake) {
            (true, false) => "pinned (base on CPU 0; caches, students beside and the frontend on CPU 1)",
            (true, true) => "pinned (base on CPU 0, kept awake; caches, students beside and the frontend on CPU 1)",
            _ => "not pinned",
        }
    );
    for m in &r.models {
        let _ = writeln!(
            s,
            "## {}\n\nplan `{}` ({} mode, budget {:.2}%): {}; {} evaluation images.\n",
            m.model,
            m.plan,
            m.plan_mode,
            100.0 * m.budget,
            if m.caches.is_empty() {
                "no caches".to_string()
            } else {
                m.caches.join(", ")
            },
            m.evaluation_images
        );
        for st in &m.streams {
            let _ = writeln!(s, "### {} stream ({} requests)\n", st.stream, st.requests);
            let _ = writeln!(
                s,
                "| configuration | mean ms | p50 ms | p95 ms | p99 ms | throughput req/s | top-1 | fidelity loss | hit rate | CPU ms/req | speed-up | p99 ratio | throughput ratio |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for c in &st.configs {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.2}% | {} | {:.1}% | {:.2} | {:.2}x | {:.2} | {:.2} |",
                    c.name,
                    spread(&c.mean_ms, 3),
                    c.p50_ms.median,
                    c.p95_ms.median,
                    c.p99_ms.median,
                    c.throughput_rps.median,
                    c.top1.median,
                    pct(&c.fidelity_loss),
                    100.0 * c.hit_rate.median,
                    c.cpu_ms_per_request.median,
                    c.speedup.median,
                    c.p99_ratio.median,
                    c.throughput_ratio.median,
                );
            }
            if let Some(o) = st.oracle_speedup {
                let best = st
                    .configs
                    .iter()
                    .filter(|c| c.config.serve_mode().is_some())
                    .map(|c| c.speedup.median)
                    .fold(f64::NAN, f64::max);
                let _ = writeln!(
                    s,
                    "\nOracle bound on this stream: {o:.2}x; best Thrift gati configuration reaches {:.0}% of it.",
                    100.0 * best / o
                );
            }
            let _ = writeln!(
                s,
                "\nSpeed-ups and ratios are against the base model alone on the same path (in-process rows: base in-process, 1 thread; Thrift rows: base only via Thrift), per repeat.\n"
            );
        }
        if !m.sweep.is_empty() {
            let _ = writeln!(
                s,
                "### Budget sweep ({} via Thrift, iid stream)\n\n| budget | caches | planned speed-up | planned loss | measured speed-up | measured fidelity loss | hit rate |\n|---|---|---|---|---|---|---|",
                m.sweep_mode
            );
            for p in &m.sweep {
                let _ = writeln!(
                    s,
                    "| {:.1}% | {} | {:.2}x | {:.2}% | {}x | {} | {:.1}% |",
                    100.0 * p.budget,
                    p.caches.len(),
                    p.expected_speedup,
                    100.0 * p.expected_fidelity_loss,
                    spread(&p.speedup, 2),
                    pct(&p.fidelity_loss),
                    100.0 * p.hit_rate.median
                );
            }
            let _ = writeln!(s);
        }
    }
    if !r.plots.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for p in &r.plots {
            if p.ends_with(".png") {
                let _ = writeln!(s, "![{p}]({p})\n");
            }
        }
    }
    if let Some(e) = &r.plot_error {
        let _ = writeln!(s, "Plots not drawn: {e}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_is_median_with_spread() {
        let f = Figure::of(&[3.0, 1.0, 2.0]);
        assert_eq!((f.median, f.min, f.max), (2.0, 1.0, 3.0));
        assert_eq!(Figure::of(&[1.0, 4.0]).median, 2.5);
        assert!(Figure::of(&[]).median.is_nan());
    }
}
