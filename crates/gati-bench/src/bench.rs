//! `gati bench`: every configuration over every stream, repeated and interleaved, plus a budget
//! sweep, written as report.json, report.md, records.jsonl and plots.

use crate::inputs::{prepare, Prepared};
use crate::measure::{base_in_process, gati_in_process, Config, LocalCluster, Run, Shape};
use crate::report::{self, Machine, ModelReport, Report, RunFigures, StreamReport, SweepPoint};
use anyhow::{bail, Context, Result};
use gati_cache::candidates::Candidates;
use gati_cache::plan::{make_plan, Plan, PlanRequest};
use gati_cache::runtime::EarlyExit;
use gati_core::names::Named;
use gati_core::workload::Stream;
use gati_server::config::ServeMode;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Options {
    pub plans: Vec<PathBuf>,
    pub data: Option<PathBuf>,
    pub streams: Vec<Stream>,
    pub configs: Vec<Config>,
    pub requests: usize,
    pub repeat: usize,
    pub warmup: usize,
    pub budgets: Vec<f64>,
    pub sweep_mode: ServeMode,
    pub saturation_clients: usize,
    pub cache_workers: usize,
    pub pin: bool,
    /// Every cluster's base worker keeps its CPU busy while it waits (`Endpoint::keep_awake`).
    pub keep_awake: bool,
    /// Answers the frontends keep for exact repeats (None: decided by each plan).
    pub exact_cache_entries: Option<usize>,
    /// `Cluster::memory_at_frontend` (None: the default).
    pub memory_at_frontend: Option<bool>,
    /// TLS on every link of the served configurations (None: plain).
    pub tls: Option<gati_server::tls::TlsFiles>,
    /// Hits checked against the base model off the response's path (0: none).
    pub complete_on_hit_fraction: f64,
    pub seed: u64,
    /// The `gati` executable that serves the cluster roles.
    pub exe: PathBuf,
    pub out: PathBuf,
    pub command_line: String,
}

/// One line of records.jsonl: the per-request answers of one run.
#[derive(Serialize)]
struct RecordLine<'a> {
    model: &'a str,
    stream: &'a str,
    /// A configuration name, `reference` (the base model in-process: what fidelity is measured
    /// against), or `sweep-BUDGET`.
    config: String,
    repeat: usize,
    req: Vec<usize>,
    class: Vec<i64>,
    layer: Vec<Option<&'a str>>,
    ms: Vec<f64>,
}

struct Records(std::io::BufWriter<std::fs::File>);

impl Records {
    fn write(&mut self, model: &str, stream: &str, config: String, repeat: usize, run: &Run) -> Result<()> {
        let r = &run.load.records;
        let line = RecordLine {
            model,
            stream,
            config,
            repeat,
            req: r.iter().map(|x| x.req).collect(),
            class: r.iter().map(|x| x.class).collect(),
            layer: r.iter().map(|x| x.layer.as_deref()).collect(),
            ms: r.iter().map(|x| x.ms).collect(),
        };
        serde_json::to_writer(&mut self.0, &line)?;
        self.0.write_all(b"\n")?;
        Ok(())
    }
}

pub fn run(o: &Options) -> Result<Report> {
    if o.plans.is_empty() {
        bail!("--plan: give at least one plan directory");
    }
    if o.requests == 0 || o.repeat == 0 {
        bail!("--requests and --repeat must be at least 1");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let started = std::time::Instant::now();
    let records_path = o.out.join("records.jsonl");
    let mut records = Records(std::io::BufWriter::new(
        std::fs::File::create(&records_path).with_context(|| format!("creating {}", records_path.display()))?,
    ));
    let mut models = Vec::new();
    for plan_dir in &o.plans {
        models.push(bench_model(o, plan_dir, &mut records)?);
    }
    records.0.flush()?;
    let mut report = Report {
        command_line: o.command_line.clone(),
        git_commit: git_commit(),
        started: utc_now(),
        seconds: 0.0,
        machine: Machine::describe(),
        requests_per_run: o.requests,
        repeat: o.repeat,
        saturation_clients: o.saturation_clients,
        pinned: o.pin,
        keep_awake: o.keep_awake,
        models,
        plots: Vec::new(),
        plot_error: None,
    };
    match crate::plot::draw_all(&report, &o.out) {
        Ok(files) => report.plots = files,
        Err(e) => report.plot_error = Some(format!("{e:#}")),
    }
    report.seconds = started.elapsed().as_secs_f64();
    gati_core::files::write_json_atomic(&report, &o.out.join("report.json"))?;
    let md = o.out.join("report.md");
    gati_core::files::write_bytes_atomic(&md, report::markdown(&report).as_bytes())?;
    Ok(report)
}

fn bench_model(o: &Options, plan_dir: &Path, records: &mut Records) -> Result<ModelReport> {
    let (plan, ee) = EarlyExit::load(plan_dir)?;
    let model_name = plan.model.clone();
    let dir = gati_core::paths::data_dir_for(&model_name, o.data.as_deref())?;
    let [_, h, w] = ee.model.spec().input_shape;
    let test = gati_core::data::load(&dir, "test", plan.test_limit, (h, w))?;
    let (_, ei) = gati_cache::split::calibration_evaluation(&test.labels);
    let eval = test.subset(&ei);
    if eval.is_empty() {
        bail!(
            "{}: the evaluation half of {} is empty",
            plan_dir.display(),
            dir.display()
        );
    }
    let candidates = match &plan.candidates {
        Some(c) => Candidates::load(c, &ee.model, &plan.weights_sha256)?
            .filter(|c| c.evaluation.len() == eval.len() && plan.candidate_costs_ms.len() == c.bank.heads.len()),
        None => None,
    };
    if !o.budgets.is_empty() && candidates.is_none() {
        bail!(
            "{}: a budget sweep re-plans from the plan's trained candidates, which are missing or were recorded on another split",
            plan_dir.display()
        );
    }
    let sweep_plans: Vec<(f64, PathBuf, Plan)> = o
        .budgets
        .iter()
        .map(|&b| {
            let c = candidates.as_ref().expect("checked above");
            let req = PlanRequest {
                margin_sigmas: 1.0,
                ..PlanRequest::like(&plan, b)
            };
            let (mut p, tensors) = make_plan(
                c,
                &plan.candidate_costs_ms,
                &plan.stage_ms,
                &req,
                &plan.weights,
                plan.threads,
            );
            p.test_limit = plan.test_limit;
            p.candidates = plan.candidates.clone();
            let d = o.out.join("plans").join(format!("{model_name}-{b}"));
            p.save(&d, &tensors)?;
            Ok((b, d, p))
        })
        .collect::<Result<_>>()?;

    let streams: Vec<(Stream, Prepared)> = o
        .streams
        .iter()
        .map(|s| Ok((*s, prepare(&eval, s.generate(&eval.labels, o.requests, o.seed))?)))
        .collect::<Result<_>>()?;
    let iid = streams.iter().position(|(s, _)| *s == Stream::Iid);
    if iid.is_none() && !sweep_plans.is_empty() {
        bail!("--budgets measures on the iid stream: add iid to --streams");
    }
    let all_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan_threads = plan.threads.max(1) as usize;

    // The reference answers: the base model in-process, batch 1, over each stream once.
    let references: Vec<Vec<i64>> = streams
        .iter()
        .map(|(s, p)| {
            let r = base_in_process(&ee.model, p, 1, 0);
            records.write(&model_name, &s.name(), "reference".into(), 0, &r)?;
            let mut classes = vec![-1; p.requests.len()];
            for x in &r.load.records {
                classes[x.req] = x.class;
            }
            Ok(classes)
        })
        .collect::<Result<_>>()?;

    eprintln!("{model_name}: starting clusters");
    let mut clusters = Vec::new();
    for c in &o.configs {
        if let Some(mode) = c.serve_mode() {
            clusters.push((*c, LocalCluster::start(&o.exe, plan_dir, mode, o.shape(*c))?));
        }
    }
    let sweep_clusters: Vec<LocalCluster> = sweep_plans
        .iter()
        .map(|(_, d, _)| LocalCluster::start(&o.exe, d, o.sweep_mode, o.shape(o.sweep_config())))
        .collect::<Result<_>>()?;

    let total = (o.repeat * (streams.len() * o.configs.len() + sweep_plans.len())) as u64;
    let pb = gati_core::progress::bar(total, &format!("bench {model_name}"));
    let mut runs: Vec<Vec<RunFigures>> = vec![Vec::new(); streams.len()];
    let mut sweep_runs: Vec<Vec<RunFigures>> = vec![Vec::new(); sweep_plans.len()];
    for rep in 0..o.repeat {
        for (si, (stream, p)) in streams.iter().enumerate() {
            // Rotate the order each repeat so no configuration always runs first or last.
            let k = o.configs.len();
            for j in 0..k {
                let config = o.configs[(j + rep) % k];
                let seed = o.seed + rep as u64;
                let run = match config {
                    Config::BaseInProcess1 => base_in_process(&ee.model, p, 1, o.warmup),
                    Config::BaseInProcessAll => base_in_process(&ee.model, p, all_cores, o.warmup),
                    Config::GatiInProcess => gati_in_process(&ee, p, plan_threads, o.warmup),
                    _ => {
                        let (_, cl) = clusters.iter().find(|(c, _)| *c == config).expect("started above");
                        cl.run(p, o.saturation_clients, o.warmup, seed)
                    }
                };
                records.write(&model_name, &stream.name(), config.key().to_string(), rep, &run)?;
                runs[si].push(RunFigures::new(config, rep, &run, &p.labels, &references[si]));
                tick(&pb, &model_name);
            }
        }
        for (bi, cl) in sweep_clusters.iter().enumerate() {
            let iid = iid.expect("checked above");
            let p = &streams[iid].1;
            let run = cl.run(p, o.saturation_clients, o.warmup, o.seed + rep as u64);
            let name = format!("sweep-{}", sweep_plans[bi].0);
            records.write(&model_name, "iid", name, rep, &run)?;
            sweep_runs[bi].push(RunFigures::new(
                o.sweep_config(),
                rep,
                &run,
                &p.labels,
                &references[iid],
            ));
            tick(&pb, &model_name);
        }
    }
    pb.finish_and_clear();
    for (_, c) in clusters {
        c.stop();
    }
    for c in sweep_clusters {
        c.stop();
    }

    let stream_reports: Vec<StreamReport> = streams
        .iter()
        .zip(runs)
        .map(|((s, p), runs)| StreamReport {
            stream: s.name(),
            requests: p.requests.len(),
            oracle_speedup: candidates.as_ref().map(|c| {
                let idx: Vec<usize> = p.requests.iter().map(|r| r.index).collect();
                gati_cache::evaluate::oracle_speedup(c, &plan.candidate_costs_ms, &plan.stage_ms, Some(&idx))
            }),
            configs: o.configs.iter().map(|c| report::summarise(*c, &runs)).collect(),
            runs,
        })
        .collect();
    let base_runs: Vec<RunFigures> = iid.map_or_else(Vec::new, |i| {
        stream_reports[i]
            .runs
            .iter()
            .filter(|r| r.config == Config::ThriftBaseOnly)
            .cloned()
            .collect()
    });
    let sweep = sweep_plans
        .iter()
        .zip(sweep_runs)
        .map(|((b, d, p), runs)| {
            let mut all = runs.clone();
            all.extend(base_runs.iter().cloned());
            let s = report::summarise(o.sweep_config(), &all);
            SweepPoint {
                budget: *b,
                plan_dir: d.display().to_string(),
                caches: cache_names(p),
                expected_speedup: p.expected.speedup,
                expected_fidelity_loss: p.expected.fidelity_loss,
                fidelity_loss: s.fidelity_loss,
                hit_rate: s.hit_rate,
                mean_ms: s.mean_ms,
                speedup: s.speedup,
                runs,
            }
        })
        .collect();
    Ok(ModelReport {
        model: model_name,
        plan: plan_dir.display().to_string(),
        plan_mode: format!("{:?}", plan.mode).to_lowercase(),
        budget: plan.budget,
        caches: cache_names(&plan),
        evaluation_images: eval.len(),
        streams: stream_reports,
        sweep_mode: format!("{:?}", o.sweep_mode).to_lowercase(),
        sweep,
    })
}

impl Options {
    /// The cluster layout that serves `config`.
    fn shape(&self, config: Config) -> Shape {
        Shape {
            pin: self.pin,
            keep_awake: self.keep_awake,
            cache_workers: self.cache_workers,
            exact_cache_entries: self.exact_cache_entries,
            memory_at_frontend: self.memory_at_frontend,
            tls: self.tls.clone(),
            complete_on_hit_fraction: self.complete_on_hit_fraction,
            base_in_frontend: config.colocated(),
        }
    }

    /// The Thrift configuration that serves in the sweep's mode.
    fn sweep_config(&self) -> Config {
        Config::ALL
            .into_iter()
            .find(|c| c.serve_mode() == Some(self.sweep_mode))
            .expect("every serve mode has a Thrift configuration")
    }
}

/// One run done: the bar moves; without a terminal, a log line every tenth of the runs.
fn tick(pb: &indicatif::ProgressBar, model: &str) {
    pb.inc(1);
    let (done, total) = (pb.position(), pb.length().unwrap_or(0));
    if pb.is_hidden() && !gati_core::progress::quiet() && done % (total / 10).max(1) == 0 {
        eprintln!("bench {model}: {done}/{total} runs");
    }
}

fn cache_names(p: &Plan) -> Vec<String> {
    p.caches
        .iter()
        .map(|c| format!("{}:{}", c.layer, c.variant.name()))
        .collect()
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
