use anyhow::Result;
use gati_server::config::ServeMode;
use gati_server::up::{start_local, OnlineOptions, UpOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Plan directory written by `gati plan`
    #[arg(long)]
    plan: PathBuf,
    /// How to serve (default: the plan's mode)
    #[arg(long, value_enum)]
    mode: Option<ServeMode>,
    /// Frontend port (0: any free port)
    #[arg(long, default_value_t = 7000)]
    port: u16,
    #[arg(long, default_value_t = 2)]
    cache_workers: usize,
    #[arg(long, default_value_t = 1)]
    base_threads: usize,
    #[arg(long, default_value_t = 1)]
    cache_threads: usize,
    /// Fraction of requests checked against the base model even after a hit: distributed, the base
    /// run completes (agreement metrics); with --online, the uniform samples validation needs (an
    /// inline hit still answers at once, the trainer completes it) [default: 0.05, 0.2 with --online]
    #[arg(long)]
    complete_fraction: Option<f64>,
    /// Online learning: a trainer process retrains the caches on served traffic and hot-swaps
    /// validated versions into the workers
    #[arg(long)]
    online: bool,
    /// Where online learning keeps its versions (default: PLAN/online)
    #[arg(long, requires = "online")]
    state_dir: Option<PathBuf>,
    /// New samples between training rounds
    #[arg(long, default_value_t = 200, requires = "online")]
    retrain_every: usize,
    /// SGD steps per cache per round
    #[arg(long, default_value_t = 40, requires = "online")]
    train_steps: usize,
    /// Disagreement allowed among a learned cache's hits [default: half the plan's budget]
    #[arg(long, requires = "online")]
    error_target: Option<f64>,
    /// Memory the base worker may hold in collected samples (MB)
    #[arg(long, default_value_t = 64.0, requires = "online")]
    sample_buffer_mb: f64,
    /// Fault injection (tests): the trainer pauses this long between writing a version's weights and its index
    #[arg(long, default_value_t = 0, hide = true)]
    fault_write_delay_ms: u64,
    /// Pin the base worker to CPU 0; cache workers, the students an inline plan runs beside the
    /// base model (`beside_cpu`) and a frontend process of its own (not with cache workers) to CPU 1
    #[arg(long)]
    pin: bool,
    /// Keep the base worker's CPU busy while it waits: a spinning thread at the lowest priority
    /// (Linux SCHED_IDLE), so a request after an idle gap runs on a warm core; costs the CPU's
    /// idle time
    #[arg(long, requires = "pin")]
    keep_awake: bool,
    /// Serve Prometheus metrics from every process
    #[arg(long)]
    metrics: bool,
    /// Requests the frontend admits at once; the excess gets `Overloaded`
    #[arg(long, default_value_t = 128)]
    max_in_flight: usize,
    /// Dynamic batching (inline and base-only): concurrent requests run as one base run of at
    /// most this many; 1 turns it off
    #[arg(long, default_value_t = 1)]
    max_batch: usize,
    /// How long a batch waits for more requests after its first (ms)
    #[arg(long, default_value_t = 2.0)]
    max_batch_delay_ms: f64,
    /// Close connections that start no request for this long (ms)
    #[arg(long, default_value_t = 300_000)]
    idle_timeout_ms: u64,
    /// Close a connection whose request has started but not arrived whole within this long (ms)
    #[arg(long, default_value_t = 10_000)]
    frame_timeout_ms: u64,
    /// Fault injection (tests): the base worker panics while running the request with this id
    #[arg(long, hide = true)]
    fault_panic_request: Option<String>,
    /// Require the token in this file on the internal services (base, cache, selector)
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: super::tls_args::ClusterTls,
    /// Run the base and cache workers' models on cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: gati_core::device::DeviceName,
    /// Fault injection (tests): every cache lookup sleeps this many milliseconds
    #[arg(long, default_value_t = 0, hide = true)]
    fault_cache_delay_ms: u64,
    /// Answers the frontend keeps for exact repeats (0: none) [default: 4096 when the plan has a
    /// memory cache and no trainer runs, else none]
    #[arg(long)]
    exact_cache_entries: Option<usize>,
    /// Inline with a memory cache: the frontend holds it (true) or the base worker (false)
    /// [default: the frontend when the stages up to the memory's layer take ≤ 5% of the model's time]
    #[arg(long)]
    memory_at_frontend: Option<bool>,
    /// Run the base worker inside the frontend's process (one process fewer, and one loopback
    /// round trip fewer per request); it takes the base worker's threads and CPUs
    #[arg(long)]
    base_in_frontend: bool,
    /// Where to write the generated CLUSTER.json (default: a temporary folder)
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Print one JSON object (endpoint, processes) once healthy
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let plan = gati_cache::plan::Plan::load(&a.plan)?;
    let mode = a.mode.unwrap_or(ServeMode::of_plan(plan.mode));
    let opts = UpOptions {
        plan: a.plan.clone(),
        mode,
        port: a.port,
        cache_workers: a.cache_workers,
        base_threads: a.base_threads,
        cache_threads: a.cache_threads,
        complete_on_hit_fraction: a.complete_fraction.unwrap_or(if a.online { 0.2 } else { 0.05 }),
        pin: a.pin,
        keep_awake: a.keep_awake,
        metrics: a.metrics,
        max_in_flight: a.max_in_flight,
        auth_token_file: a.token_file.clone().map(std::path::absolute).transpose()?,
        tls: a.tls.files()?,
        device: a.device,
        fault_cache_delay_ms: a.fault_cache_delay_ms,
        max_batch: a.max_batch,
        max_batch_delay_ms: a.max_batch_delay_ms,
        idle_timeout_ms: a.idle_timeout_ms,
        frame_timeout_ms: a.frame_timeout_ms,
        fault_panic_request: a.fault_panic_request.clone(),
        exact_cache_entries: a.exact_cache_entries,
        memory_at_frontend: a.memory_at_frontend,
        base_in_frontend: a.base_in_frontend,
        online: a.online.then(|| OnlineOptions {
            state_dir: a.state_dir.clone(),
            retrain_every: a.retrain_every,
            steps: a.train_steps,
            buffer_mb: a.sample_buffer_mb,
            error_target: a.error_target,
            poll_ms: 200,
            fault_write_delay_ms: a.fault_write_delay_ms,
        }),
    };
    let tmp = tempfile::tempdir()?;
    let dir = a.workdir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("cluster.json");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))?;
    let (cluster, mut sup) = start_local(&std::env::current_exe()?, &opts, &config)?;
    if a.json {
        super::print_json(&serde_json::json!({
            "endpoint": cluster.frontend.address(),
            "mode": cluster.mode,
            "config": config,
            "pids": sup.pids(),
            "trainer": cluster.trainer.as_ref().map(|t| t.endpoint.address().to_string()),
            "state_dir": cluster.state_dir(),
            "metrics": {
                "frontend": cluster.frontend.metrics,
                "base": cluster.base.metrics,
                "caches": cluster.caches.iter().map(|c| c.endpoint.metrics.clone()).collect::<Vec<_>>(),
                "trainer": cluster.trainer.as_ref().and_then(|t| t.endpoint.metrics.clone()),
            },
        }))?;
    } else {
        println!(
            "gati up: {:?} cluster of {} ready at {}",
            cluster.mode, plan.model, cluster.frontend.listen
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    while !stop.load(Ordering::SeqCst) {
        sup.supervise()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("gati up: stopping");
    sup.stop();
    Ok(())
}
