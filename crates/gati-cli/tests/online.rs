//! Online learning through real processes: `gati up --online` (frontend, base worker, trainer),
//! `gati loadgen` sending workload streams, `gati admin` for the operator controls.

mod common;

use common::{gati, plan_dir, Cluster};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn loadgen(endpoint: &str, extra: &[&str]) -> Value {
    let out = gati()
        .args(["loadgen", "--json", "--endpoint", endpoint, "--plan"])
        .arg(plan_dir())
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn admin(cluster: &Cluster, args: &[&str]) -> Value {
    let out = gati()
        .args(["admin", "--json", "--config", cluster.info["config"].as_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn online(state: &Path, extra: &[&str]) -> Cluster {
    online_in("inline", state, extra)
}

fn online_in(mode: &str, state: &Path, extra: &[&str]) -> Cluster {
    let mut args = vec![
        "--online",
        "--retrain-every",
        "100",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Cluster::up_with(mode, &args)
}

fn hit_rates(report: &Value) -> Vec<f64> {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["hit_rate"].as_f64().unwrap())
        .collect()
}

/// A working set of two classes that changes every 500 requests (6,000 requests: on fewer, which
/// versions happen to serve around the shifts moves the loss by more than the margin the frozen
/// plan leaves under the bound), served with online learning and
/// with the same caches frozen: the trainer receives the samples and runs its rounds, versions it
/// makes are swapped in under load without a failed request, and fidelity loss over the whole
/// stream stays within the plan's budget + 0.5 pp.
#[test]
fn online_learning_serves_a_shifting_working_set_within_budget() {
    let budget = gati_cache::plan::Plan::load(plan_dir()).unwrap().budget;
    let stream = [
        "--stream",
        "working-set:2:500",
        "--stream-length",
        "6000",
        "--requests",
        "6000",
        "--window",
        "100",
    ];
    let frozen = {
        let c = Cluster::up("inline");
        loadgen(&c.endpoint(), &stream)
    };
    let state = tempfile::tempdir().unwrap();
    // Learned thresholds at 2% disagreement among hits: the plan's own caches already use most
    // of its 5% budget on this stream. Half the requests sampled: a sampled hit still answers at
    // once (the trainer completes it), and learning needs the validation samples.
    // A buffer that holds the whole stream: on a loaded machine the niced trainer lags behind.
    let c = online(
        state.path(),
        &[
            "--error-target",
            "0.02",
            "--complete-fraction",
            "0.5",
            "--sample-buffer-mb",
            "256",
        ],
    );
    let learned = loadgen(&c.endpoint(), &stream);
    let (s, o) = (hit_rates(&frozen), hit_rates(&learned));
    eprintln!("hit rate per 100 requests\n  static {s:.2?}\n  online {o:.2?}");
    // Recovery: in the last 300 of each working set's 500 requests, online caches answer at least
    // 60% as often as the frozen ones (a version sharpened on the previous classes, or a guard
    // that switched a cache off, must not leave the caches crippled for the new ones).
    let late = |r: &[f64]| -> Vec<f64> { r.chunks(5).map(|w| w[2..].iter().sum::<f64>() / 3.0).collect() };
    let recovery: Vec<f64> = late(&o).iter().zip(late(&s)).map(|(o, s)| o / s.max(1e-9)).collect();
    eprintln!("online / static hit rate late in each working set: {recovery:.2?}");
    let loss = |r: &Value| 1.0 - r["agreement"].as_f64().unwrap();
    let trainer_metrics = c.info["metrics"]["trainer"].as_str().unwrap().to_string();
    let base_metrics = c.info["metrics"]["base"].as_str().unwrap().to_string();
    let samples = common::metric(&base_metrics, "gati_online_samples_total");
    let lost = common::metric(&base_metrics, "gati_online_samples_dropped_total");
    // The trainer runs at low priority: on a busy machine it may still be working through the
    // samples the stream left. Let it take them all and finish its rounds.
    let start = Instant::now();
    while common::metric(&trainer_metrics, "gati_online_samples_received_total") < samples - lost
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rounds = common::metric(&trainer_metrics, "gati_online_rounds_total");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = common::metric(&trainer_metrics, "gati_online_rounds_total");
        if now == rounds {
            break;
        }
        rounds = now;
    }
    let completed = common::metric(&trainer_metrics, "gati_online_samples_completed_total");
    eprintln!(
        "RESULT static: hit rate {:.3} loss {:.4}; online: hit rate {:.3} loss {:.4}; hits per version {}, agreement {}; {samples} samples ({lost} lost, {completed} completed by the trainer), {rounds} rounds",
        frozen["hit_rate"].as_f64().unwrap(),
        loss(&frozen),
        learned["hit_rate"].as_f64().unwrap(),
        loss(&learned),
        learned["hits_per_version"],
        learned["agreement_per_version"]
    );
    assert_eq!(
        learned["errors"],
        serde_json::json!({}),
        "failed requests while learning"
    );
    assert_eq!(learned["requests"].as_u64(), Some(6000));
    // Misses and the hits sampled to complete are collected, none lost.
    assert!(
        (0.2 * 6000.0..=6000.0).contains(&samples),
        "{samples} samples collected"
    );
    assert!(lost <= 0.01 * samples, "{lost} samples lost");
    // Sampled hits answered at their cache reach the trainer, which runs the rest of the model.
    assert!(completed >= 100.0, "{completed} sampled hits completed by the trainer");
    assert!(rounds >= 3.0, "{rounds} training rounds");
    assert!(
        recovery.iter().all(|&r| r >= 0.6),
        "hit rate late in a working set below 60% of the static caches': {recovery:.2?}"
    );
    assert!(
        loss(&learned) <= budget + 0.005,
        "online fidelity loss {:.4}",
        loss(&learned)
    );
    // Every version that answered is one the trainer listed, or an older one it has since pruned
    // (it keeps the plan and the 16 newest).
    let listed: Vec<String> = admin(&c, &["versions"])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect();
    let number = |v: &str| v.trim_start_matches('v').parse::<u64>().unwrap();
    let oldest_learned = listed.iter().map(|v| number(v)).filter(|&n| n > 0).min().unwrap_or(0);
    for v in learned["hits_per_version"].as_object().unwrap().keys() {
        assert!(
            listed.contains(v) || number(v) < oldest_learned,
            "{v} answered but is not listed in {listed:?}"
        );
    }
}

/// A learned version on disk serves from the start; under load from two clients the operator
/// pins the plan's version (v0) and then the learned one again: answers name the version that
/// answered, switch with every pin, and no request fails.
#[test]
fn versions_hot_swap_under_load_without_a_failed_request() {
    hot_swap_under_load("inline");
}

/// The same with the caches in their own worker processes: the trainer installs each version in
/// both cache workers by RPC.
#[test]
fn versions_hot_swap_in_the_cache_workers_under_load_without_a_failed_request() {
    hot_swap_under_load("distributed");
}

/// Adds a version to the state folder `state` whose caches answer more often (every threshold
/// lowered a little), and pauses learning, so the trainer publishes no version of its own; the
/// new version's name.
fn lowered_version(state: &Path) -> String {
    use gati_cache::versions::VersionStore;
    let store = VersionStore::open(plan_dir(), state).unwrap();
    let mut idx = store.index().unwrap();
    let mut states = store.states(&idx, 0).unwrap();
    for s in &mut states {
        if let gati_cache::decision::Decision::Threshold { thresholds } = &mut s.decision {
            thresholds.iter_mut().for_each(|t| *t = (*t - 0.05).max(0.3));
        }
    }
    let v1 = gati_cache::versions::name(store.add(&mut idx, &states, "test").unwrap());
    let mut idx = store.index().unwrap();
    idx.paused = true;
    store.save_index(&idx).unwrap();
    v1
}

/// With the base worker inside the frontend's process, the trainer still reaches it through its
/// Thrift service: the versions the operator pins are installed there and answer.
#[test]
fn versions_reach_a_base_worker_in_the_frontends_process() {
    let state = tempfile::tempdir().unwrap();
    let v1 = lowered_version(state.path());
    let c = online(state.path(), &["--base-in-frontend"]);
    assert_eq!(
        c.info["pids"].as_array().unwrap().len(),
        2,
        "trainer and frontend: {}",
        c.info
    );
    assert_eq!(admin(&c, &["versions"])["serving"], v1.as_str());
    let images = common::test_images(60);
    let mut client = c.client();
    for v in ["v0", v1.as_str()] {
        let pinned = admin(&c, &["pin", v]);
        assert!(
            pinned["workers"].as_object().unwrap().values().all(|w| w == v),
            "{pinned}"
        );
        let versions: Vec<Option<String>> = common::infer_images(&mut client, &images)
            .into_iter()
            .map(|r| r.cache_version)
            .collect();
        let hits = versions.iter().flatten().count();
        assert!(hits > 0, "no cache hit under {v}");
        assert!(versions.iter().flatten().all(|h| h == v), "{v}: {versions:?}");
    }
}

fn hot_swap_under_load(mode: &str) {
    let state = tempfile::tempdir().unwrap();
    let v1 = lowered_version(state.path());
    let c = online_in(mode, state.path(), &[]);
    assert_eq!(admin(&c, &["versions"])["serving"], v1.as_str());
    let records = state.path().join("swap.jsonl");
    let load = gati()
        .args([
            "loadgen",
            "--json",
            "--concurrency",
            "2",
            "--duration",
            "12",
            "--stream",
            "iid",
            "--endpoint",
        ])
        .arg(c.endpoint())
        .arg("--records")
        .arg(&records)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Each version answers a few dozen requests before the next swap (polling the frontend's
    // hits per version: on a loaded machine the load generator takes a while to start).
    let fm = c.info["metrics"]["frontend"].as_str().unwrap().to_string();
    let hits = |v: &str| common::metric(&fm, &format!("gati_cache_version_hits_total{{version=\"{v}\"}}"));
    let wait_for = |v: &str, n: f64| {
        let start = Instant::now();
        while hits(v) < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&v1, 30.0);
    let pinned = admin(&c, &["pin", "v0"]);
    assert_eq!(pinned["serving"], "v0");
    assert_eq!(pinned["pinned"], "v0");
    assert!(pinned["workers"].as_object().unwrap().values().all(|v| v == "v0"));
    wait_for("v0", 30.0);
    let before = hits(&v1);
    let back = admin(&c, &["pin", &v1]);
    assert_eq!(back["serving"], v1.as_str());
    assert!(back["workers"].as_object().unwrap().values().all(|v| v == v1.as_str()));
    wait_for(&v1, before + 30.0);
    let out = load.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "failed requests during the swaps"
    );
    let versions: Vec<String> = std::fs::read_to_string(&records)
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["version"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let mut runs: Vec<&str> = Vec::new();
    for v in &versions {
        if runs.last() != Some(&v.as_str()) {
            runs.push(v);
        }
    }
    eprintln!(
        "RESULT hot swap under load ({mode}): {} requests, 0 failed, answering versions in order {runs:?}",
        report["requests"]
    );
    assert!(
        runs.windows(3).any(|w| w == [v1.as_str(), "v0", v1.as_str()]),
        "versions answering in order: {runs:?}"
    );
    // Rollback pins the version listed before the serving one; unpin lets learning promote again.
    assert_eq!(admin(&c, &["rollback"])["serving"], "v0");
    assert_eq!(admin(&c, &["unpin"])["pinned"], Value::Null);
    assert_eq!(admin(&c, &["resume"])["paused"], false);
}

/// The trainer is killed (SIGKILL) after writing a version's weights but before its index names
/// them; the cluster started again serves the last complete version, and the orphan is never used.
#[test]
fn a_trainer_killed_mid_write_leaves_the_last_good_version_serving() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_path_buf();
    let index =
        |d: &Path| -> Option<Value> { serde_json::from_slice(&std::fs::read(d.join("versions.json")).ok()?).ok() };
    let good = {
        let c = online(&dir, &["--fault-write-delay-ms", "3000"]);
        let mut load = gati()
            .args([
                "loadgen",
                "--json",
                "--stream",
                "working-set:2:500",
                "--duration",
                "120",
                "--endpoint",
            ])
            .arg(c.endpoint())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let trainer = trainer_pid(&c);
        let start = Instant::now();
        // Wait for a second version being written: one complete version listed, and a weights
        // file that the index does not name yet.
        let good = loop {
            assert!(
                start.elapsed() < Duration::from_secs(150),
                "no second version was written"
            );
            if let Some(idx) = index(&dir) {
                let listed: Vec<String> = idx["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v["caches_file"].as_str().map(String::from))
                    .collect();
                let orphan = std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("caches-") && !listed.contains(&n)
                });
                if !listed.is_empty() && orphan {
                    // SAFETY: kill(2) on a process of the cluster this test started.
                    unsafe { libc::kill(trainer, libc::SIGKILL) };
                    break idx["serving"].as_u64().unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = load.kill();
        let _ = load.wait();
        good
    };
    let idx = index(&dir).unwrap();
    assert_eq!(idx["serving"].as_u64(), Some(good), "the index moved after the kill");
    let good = format!("v{good}");
    // Restarted (without the fault): the last complete version serves. Learning is paused before
    // any request, so that every hit must come from the version the restart loaded (this traffic
    // is not the working set it learned on: the drift guard would rightly publish the plan again).
    let c = online(&dir, &[]);
    assert_eq!(admin(&c, &["pause"])["paused"], true);
    let v = admin(&c, &["versions"]);
    assert_eq!(v["serving"], good.as_str());
    assert!(
        v["workers"].as_object().unwrap().values().all(|w| w == good.as_str()),
        "{v}"
    );
    let r = loadgen(&c.endpoint(), &["--requests", "60"]);
    eprintln!(
        "RESULT killed mid-write: restart serves {good}; hits per version {}",
        r["hits_per_version"]
    );
    assert_eq!(r["errors"], serde_json::json!({}));
    let hv = r["hits_per_version"].as_object().unwrap();
    assert!(
        !hv.is_empty() && hv.keys().all(|k| k == &good),
        "hits per version {hv:?}"
    );
}

/// The trainer's pid among the cluster's processes (its command line names the role).
fn trainer_pid(c: &Cluster) -> i32 {
    c.info["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains("trainer"))
                .unwrap_or(false)
        })
        .expect("a trainer process")
}

/// What the trainer does with an inline hit sampled to complete (activations up to the cache that
/// answered, no logits): it runs the rest of the base model and gets the activations at the later
/// caches and the logits that a complete run would have left.
#[test]
fn the_trainer_completes_a_sampled_hit_like_a_complete_run() {
    use gati_cache::runtime::EarlyExit;
    let (_, ee) = EarlyExit::load(plan_dir()).unwrap();
    assert!(ee.caches.len() >= 2, "the test plan has two caches");
    let x = tch::Tensor::randn([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let act = |k: usize| tch::no_grad(|| ee.model.forward_range(0, k + 1, &x));
    let full: Vec<tch::Tensor> = ee.caches.iter().map(|c| act(c.stage)).collect();
    let logits = tch::no_grad(|| ee.model.forward(&x));
    let (acts, completed) = gati_server::learning::complete_sample(&ee, vec![act(ee.caches[0].stage)], &[]).unwrap();
    assert_eq!(acts.len(), full.len());
    for (a, b) in acts.iter().zip(&full) {
        assert!(a.allclose(b, 1e-5, 1e-5, false));
    }
    assert!(completed.allclose(&logits, 1e-4, 1e-4, false));
    // A complete sample passes as sent; malformed ones are refused, not run.
    let l: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    let caches = full.len();
    assert_eq!(
        gati_server::learning::complete_sample(&ee, full, &l).unwrap().0.len(),
        caches
    );
    assert!(gati_server::learning::complete_sample(&ee, vec![], &[]).is_err());
    let wrong = tch::Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let err = gati_server::learning::complete_sample(&ee, vec![wrong], &[]).unwrap_err();
    assert!(format!("{err:#}").contains("partial sample"), "{err:#}");
}
