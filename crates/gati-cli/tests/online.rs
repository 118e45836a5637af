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
    let mut args = vec![
        "--online",
        "--retrain-every",
        "100",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Cluster::up_with("inline", &args)
}

fn hit_rates(report: &Value) -> Vec<f64> {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["hit_rate"].as_f64().unwrap())
        .collect()
}

/// A working set of two classes that changes every 500 requests: served with online learning, the
/// hit rate climbs back within each window and ends well above the frozen caches' on the same
/// requests, fidelity loss stays within the plan's budget + 0.5 pp, and versions are swapped in
/// under load without a failed request. Then, under load again, the operator pins the plan's
/// version and re-pins the learned one: answers follow, still without a failure.
#[test]
fn online_caches_recover_after_shifts_and_swap_versions_under_load() {
    let budget = gati_cache::plan::Plan::load(plan_dir()).unwrap().budget;
    let stream = [
        "--stream",
        "working-set:2:500",
        "--stream-length",
        "3000",
        "--requests",
        "3000",
        "--window",
        "100",
    ];
    let frozen = {
        let c = Cluster::up("inline");
        loadgen(&c.endpoint(), &stream)
    };
    let state = tempfile::tempdir().unwrap();
    let c = online(state.path(), &[]);
    let learned = loadgen(&c.endpoint(), &stream);
    let (s, o) = (hit_rates(&frozen), hit_rates(&learned));
    eprintln!("hit rate per 100 requests\n  static {s:.2?}\n  online {o:.2?}");
    let loss = |r: &Value| 1.0 - r["agreement"].as_f64().unwrap();
    eprintln!(
        "RESULT static: hit rate {:.3} loss {:.4}; online: hit rate {:.3} loss {:.4}; hits per version {}",
        frozen["hit_rate"].as_f64().unwrap(),
        loss(&frozen),
        learned["hit_rate"].as_f64().unwrap(),
        loss(&learned),
        learned["hits_per_version"]
    );
    assert_eq!(
        learned["errors"],
        serde_json::json!({}),
        "failed requests while versions were swapped"
    );
    assert!(learned["requests"].as_u64() == Some(3000));
    assert!(
        learned["hits_per_version"]
            .as_object()
            .unwrap()
            .keys()
            .any(|v| v != "v0"),
        "no learned version answered: {}",
        learned["hits_per_version"]
    );
    // Recovery: in every window after the first, the second half (from 250 requests after the
    // shift) hits clearly more often than the frozen caches on the same requests.
    for w in 1..6 {
        let half = |h: &[f64]| h[w * 5 + 2..w * 5 + 5].iter().sum::<f64>() / 3.0;
        assert!(
            half(&o) >= half(&s) + 0.05,
            "window {w}: online {:.3} vs static {:.3} hit rate 250-500 requests after the shift",
            half(&o),
            half(&s)
        );
    }
    assert!(
        loss(&learned) <= budget + 0.005,
        "online fidelity loss {:.4}",
        loss(&learned)
    );

    // Pin v0 and re-pin the latest version while 2 clients keep sending.
    let latest = admin(&c, &["versions"])["serving"].as_str().unwrap().to_string();
    assert_ne!(latest, "v0");
    let records = state.path().join("swap.jsonl");
    let mut load = gati()
        .args([
            "loadgen",
            "--json",
            "--concurrency",
            "2",
            "--duration",
            "6",
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
    std::thread::sleep(Duration::from_millis(1500));
    let pinned = admin(&c, &["pin", "v0"]);
    assert_eq!(pinned["serving"], "v0");
    assert_eq!(pinned["pinned"], "v0");
    std::thread::sleep(Duration::from_millis(1500));
    let back = admin(&c, &["pin", &latest]);
    assert_eq!(back["serving"], latest.as_str());
    assert!(back["workers"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == latest.as_str()));
    let out = load.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "failed requests during pin/re-pin"
    );
    // Answers name the version that answered: the latest, then v0, then the latest again.
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
        "RESULT pin/re-pin under load: {} requests, 0 failed, versions in order {runs:?}",
        report["requests"]
    );
    assert!(
        runs.windows(3).any(|w| w == [latest.as_str(), "v0", latest.as_str()]),
        "versions answering in order: {runs:?}"
    );
    let rolled = admin(&c, &["rollback"]);
    assert_ne!(rolled["serving"], latest.as_str(), "rollback pins the version before");
    assert_eq!(admin(&c, &["unpin"])["pinned"], Value::Null);
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
    // Restarted (without the fault): the last complete version serves.
    let c = online(&dir, &[]);
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
