//! Shared by the integration tests that run real processes: the `gati` binary, a small ResNet-20
//! plan trained once per test binary, and a local cluster started with `gati up`.
#![allow(dead_code)]

use gati_server::client::connect;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub fn gati() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gati"));
    c.env("GATI_QUIET", "1").env("GATI_HOME", env!("CARGO_TARGET_TMPDIR"));
    c
}

/// A small ResNet-20 plan with a generous budget so that caches answer often (built once). Planned
/// with fixed stage and cache costs, so the choice does not depend on how loaded the machine is.
pub fn plan_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One intra-op thread: the trained caches, and so the plan, come out the same whatever
        // else the test process runs at the time.
        gati_core::set_threads(1);
        let dir = tempfile::tempdir().unwrap().keep();
        let ckpt = gati_core::paths::checkpoint("resnet20").unwrap();
        let w = gati_core::paths::convert_cached("resnet20", &ckpt, &dir.join("weights")).unwrap();
        let model = gati_core::BaseModel::load("resnet20", &w, tch::Device::Cpu).unwrap();
        let cifar = gati_core::paths::cifar10_dir().unwrap();
        let train = gati_core::data::load(&cifar, "train", Some(1500), (32, 32)).unwrap();
        let test = gati_core::data::load(&cifar, "test", Some(1000), (32, 32)).unwrap();
        let config = gati_cache::train::TrainConfig {
            epochs: 3,
            train_limit: Some(1500),
            ..Default::default()
        };
        let stages = ["layer2.1", "layer2.2", "layer3.0", "layer3.1"];
        let (out, p) = plan_fixed_costs(&dir, &model, &w, &train, &test, &stages, &config, 0.2);
        assert!(
            p.caches.len() >= 2,
            "the test plan needs caches at two layers or more: {:?}",
            p.caches
        );
        out
    })
}

/// Trains `conv-pool` and `gap` heads at `stages` (names) on `train`, and plans them for a 5%
/// budget in distributed mode with fixed costs (`stage_ms` per stage, 0.01 ms per cache) on the
/// test split's calibration half; the plan is saved in `dir/plan`.
#[allow(clippy::too_many_arguments)]
pub fn plan_fixed_costs(
    dir: &std::path::Path,
    model: &gati_core::BaseModel,
    weights: &std::path::Path,
    train: &gati_core::data::Dataset,
    test: &gati_core::data::Dataset,
    stages: &[&str],
    config: &gati_cache::train::TrainConfig,
    stage_ms: f64,
) -> (PathBuf, gati_cache::plan::Plan) {
    use gati_cache::{decision::DecisionKind, pipeline, plan, planner::Mode, Variant};
    let (ci, ei) = gati_cache::split::calibration_evaluation(&test.labels);
    let stages: Vec<usize> = stages.iter().map(|n| model.stage_index(n).unwrap()).collect();
    let sha = gati_core::weights::sha256_file(weights).unwrap();
    let inputs = pipeline::Inputs {
        model,
        weights_sha256: &sha,
        train,
        calibration: &test.subset(&ci),
        evaluation: &test.subset(&ei),
        stages: &stages,
        variants: &[Variant::ConvPool, Variant::Gap],
        config,
        outcomes_rule: gati_cache::split::SPLIT_RULE,
        student_init: None,
        student_adapter: None,
    };
    let (cands, _) = pipeline::prepare(&inputs, &dir.join("candidates"), false).unwrap();
    let req = plan::PlanRequest {
        mode: Mode::Distributed,
        budget: 0.05,
        margin_sigmas: 0.0,
        decision: DecisionKind::Threshold,
        send_ms: 0.001,
        transfer_ms: 0.001,
        memory_budget_mb: None,
        ..plan::PlanRequest::default()
    };
    let costs = vec![0.01; cands.bank.heads.len()];
    let stage_costs = vec![stage_ms; model.num_stages()];
    let (mut p, tensors) = plan::make_plan(&cands, &costs, &stage_costs, &req, weights, tch::get_num_threads());
    p.test_limit = Some(test.len());
    p.candidates = Some(dir.join("candidates"));
    let out = dir.join("plan");
    p.save(&out, &tensors).unwrap();
    (out, p)
}

pub struct Cluster {
    pub child: Child,
    pub info: serde_json::Value,
}

impl Cluster {
    pub fn up(mode: &str) -> Self {
        Self::up_with(mode, &[])
    }

    /// `gati up` with extra arguments.
    pub fn up_with(mode: &str, extra: &[&str]) -> Self {
        Self::up_plan(plan_dir(), mode, extra)
    }

    /// `gati up` on another plan.
    pub fn up_plan(plan: &std::path::Path, mode: &str, extra: &[&str]) -> Self {
        Self::up_command(gati(), plan, mode, extra)
    }

    /// `gati up` run by `gati` (another copy of the binary, say).
    pub fn up_command(mut gati: Command, plan: &std::path::Path, mode: &str, extra: &[&str]) -> Self {
        let mut child = gati
            .args([
                "up",
                "--port",
                "0",
                "--metrics",
                "--json",
                "--cache-workers",
                "2",
                "--mode",
                mode,
                "--plan",
            ])
            .arg(plan)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("gati up printed {line:?}"));
        Self { child, info }
    }

    pub fn endpoint(&self) -> String {
        self.info["endpoint"].as_str().unwrap().to_string()
    }

    pub fn client(&self) -> gati_server::client::Client {
        connect(&self.endpoint(), Duration::from_secs(30)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: `gati up` stops every process it started.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn test_images(n: usize) -> Vec<PathBuf> {
    let ds = gati_core::data::load_image_folder(&gati_core::paths::cifar10_dir().unwrap(), "test", Some(n), (32, 32))
        .unwrap();
    ds.sources.iter().map(PathBuf::from).collect()
}

/// One `infer` of each image file (ResNet-20), in order; every one must be answered.
pub fn infer_images(client: &mut gati_server::client::Client, images: &[PathBuf]) -> Vec<gati_rpc::InferResponse> {
    use gati_rpc::TGatiSyncClient;
    images
        .iter()
        .map(|p| {
            client
                .infer(gati_server::client::image_request(
                    "resnet20",
                    std::fs::read(p).unwrap(),
                ))
                .unwrap()
        })
        .collect()
}

pub fn metric(addr: &str, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    // Prometheus 3 refuses a scrape that does not say what it is.
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "/metrics headers: {head}"
    );
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of process `pid`, in MB.
pub fn rss_mb(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
