//! A service's worst day, on real processes over loopback: hostile bytes on every port, malformed
//! requests of every kind, workers killed with SIGKILL or made slow under load, overload, and a
//! writer killed mid-write. Nothing may crash, hang, or lose the last good files.

mod common;

use common::{gati, metric, plan_dir, rss_mb, test_images, Cluster};
use gati_bench::load::{drive, Load, Pace, Until};
use gati_rpc::{InferRequest, Input, TGatiSyncClient, TensorData};
use gati_server::client::{describe, image_request, Frontend};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thrift::protocol::{
    TBinaryOutputProtocol, TListIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TType,
};
use thrift::transport::TBufferChannel;

/// These tests measure latency and capacity and kill processes: one at a time, so that a test's
/// phases do not compete with another test's load for the same cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster_config(c: &Cluster) -> serde_json::Value {
    let path = c.info["config"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn pids(c: &Cluster) -> Vec<i32> {
    c.info["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect()
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a process this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A framed strict-binary call `name` whose body `write` produces.
fn call(name: &str, write: impl FnOnce(&mut dyn TOutputProtocol)) -> Vec<u8> {
    let mut ch = TBufferChannel::with_capacity(0, 1 << 16);
    {
        let mut o = TBinaryOutputProtocol::new(&mut ch, true);
        o.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Call, 1))
            .unwrap();
        write(&mut o);
        o.flush().unwrap();
    }
    framed(&ch.write_bytes())
}

/// Raw payloads no honest client sends.
fn hostile_payloads() -> Vec<(&'static str, Vec<u8>)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut v: Vec<(&str, Vec<u8>)> = (0..4)
        .map(|_| ("random bytes", (0..1024).map(|_| rng.gen::<u8>()).collect()))
        .collect();
    let mut truncated = framed(&[0x80, 0x01, 0, 1, 0, 0, 0, 5, b'i', b'n', b'f', b'e', b'r']);
    truncated.truncate(9);
    v.push(("truncated frame", truncated));
    v.push(("frame declaring 2 GiB", 0x7fff_ffffi32.to_be_bytes().to_vec()));
    v.push(("frame of negative length", (-8i32).to_be_bytes().to_vec()));
    v.push(("list declaring 2^31 - 1 elements", {
        let mut b = call("infer", |o| {
            o.write_field_begin(&thrift::protocol::TFieldIdentifier::new("r", TType::Struct, 1))
                .unwrap();
            o.write_field_begin(&thrift::protocol::TFieldIdentifier::new("l", TType::List, 1))
                .unwrap();
            o.write_list_begin(&TListIdentifier::new(TType::I64, i32::MAX)).unwrap();
        });
        b.extend_from_slice(&[0u8; 16]);
        b
    }));
    v.push((
        "binary of negative length",
        call("infer", |o| {
            o.write_field_begin(&thrift::protocol::TFieldIdentifier::new("r", TType::String, 1))
                .unwrap();
            o.write_i32(-2).unwrap();
        }),
    ));
    v.push((
        "field of the wrong type",
        call("infer", |o| {
            o.write_field_begin(&thrift::protocol::TFieldIdentifier::new("r", TType::I32, 1))
                .unwrap();
            o.write_i32(5).unwrap();
            o.write_field_stop().unwrap();
        }),
    ));
    v.push(("unknown method", call("format_disk", |o| o.write_field_stop().unwrap())));
    // thrift 0.17's generated union reader panicked on this (found by the fuzz target).
    v.push((
        "input union holding only an unknown field",
        call("infer", |o| {
            use thrift::protocol::TFieldIdentifier as F;
            o.write_field_begin(&F::new("request", TType::Struct, 1)).unwrap();
            o.write_field_begin(&F::new("model", TType::String, 1)).unwrap();
            o.write_string("resnet20").unwrap();
            o.write_field_begin(&F::new("input", TType::Struct, 2)).unwrap();
            o.write_field_begin(&F::new("future", TType::I32, 9)).unwrap();
            o.write_i32(5).unwrap();
            o.write_field_stop().unwrap();
            o.write_field_stop().unwrap();
            o.write_field_stop().unwrap();
        }),
    ));
    v
}

fn request(model: &str, input: Input) -> InferRequest {
    InferRequest {
        model: model.into(),
        input,
        request_id: None,
        deadline_ms: None,
        top_k: None,
    }
}

fn tensor(dtype: &str, shape: Vec<i64>, data: Vec<u8>) -> Input {
    Input::Tensor(TensorData {
        dtype: Some(dtype.into()),
        shape,
        data,
    })
}

fn f32_bytes(n: usize, v: f32) -> Vec<u8> {
    std::iter::repeat_n(v.to_le_bytes(), n).flatten().collect()
}

/// A 5000x5000 PNG of ~30 KB: 25 M pixels once decoded.
fn decompression_bomb() -> Vec<u8> {
    let img = image::GrayImage::new(5000, 5000);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Well-formed Thrift, bad content: each must come back as the named exception.
fn bad_requests(good: &[u8]) -> Vec<(&'static str, InferRequest, &'static str)> {
    let n = 3 * 32 * 32;
    let mut past = image_request("resnet20", good.to_vec());
    past.deadline_ms = Some(-5);
    vec![
        (
            "tensor bytes do not match shape",
            request("resnet20", tensor("float32", vec![1, 3, 32, 32], vec![0; 100])),
            "InvalidInput",
        ),
        (
            "negative shape",
            request("resnet20", tensor("float32", vec![1, -3, 32, 32], f32_bytes(n, 0.0))),
            "InvalidInput",
        ),
        (
            "enormous shape",
            request("resnet20", tensor("float32", vec![1, 3, 1 << 31, 1 << 31], vec![0; 64])),
            "InvalidInput",
        ),
        (
            "NaN values",
            request(
                "resnet20",
                tensor("float32", vec![1, 3, 32, 32], f32_bytes(n, f32::NAN)),
            ),
            "InvalidInput",
        ),
        (
            "Inf values",
            request(
                "resnet20",
                tensor("float32", vec![1, 3, 32, 32], f32_bytes(n, f32::INFINITY)),
            ),
            "InvalidInput",
        ),
        (
            "unknown dtype",
            request("resnet20", tensor("complex128", vec![1, 3, 32, 32], f32_bytes(n, 0.0))),
            "InvalidInput",
        ),
        (
            "wrong image size tensor",
            request("resnet20", tensor("float32", vec![1, 3, 64, 64], f32_bytes(4 * n, 0.0))),
            "InvalidInput",
        ),
        (
            "undecodable image",
            request("resnet20", Input::Image(b"\xff\xd8\xff\xe0 not a jpeg".to_vec())),
            "InvalidInput",
        ),
        (
            "empty image",
            request("resnet20", Input::Image(Vec::new())),
            "InvalidInput",
        ),
        (
            "decompression bomb",
            request("resnet20", Input::Image(decompression_bomb())),
            "InvalidInput",
        ),
        (
            "unknown model",
            request("resnet9000", Input::Image(good.to_vec())),
            "ModelNotFound",
        ),
        (
            "model name as a path",
            request("../../../etc/passwd", Input::Image(good.to_vec())),
            "ModelNotFound",
        ),
        ("deadline already passed", past, "DeadlineExceeded"),
    ]
}

#[test]
fn hostile_input_gets_typed_errors_or_a_closed_connection_and_every_process_keeps_serving() {
    let _serial = serial();
    let c = Cluster::up("distributed");
    let cfg = cluster_config(&c);
    let procs = pids(&c);
    let good = std::fs::read(&test_images(1)[0]).unwrap();
    let mut client = c.client();
    client.infer(image_request("resnet20", good.clone())).unwrap();
    let rss_before: Vec<f64> = procs.iter().map(|&p| rss_mb(p)).collect();

    let mut ports = vec![c.endpoint(), cfg["base"]["listen"].as_str().unwrap().to_string()];
    ports.push(cfg["selector"].as_str().unwrap().to_string());
    for cw in cfg["caches"].as_array().unwrap() {
        ports.push(cw["listen"].as_str().unwrap().to_string());
    }
    let mut tried = 0;
    for round in 0..3 {
        for port in &ports {
            for (what, bytes) in hostile_payloads() {
                let mut s = TcpStream::connect(port).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                // The server answers with an exception or closes; it never hangs on us.
                let mut sink = Vec::new();
                let t = Instant::now();
                let _ = s.read_to_end(&mut sink);
                assert!(t.elapsed() < Duration::from_secs(9), "{what} to {port}: no close");
                tried += 1;
                for &p in &procs {
                    assert!(alive(p), "round {round}: process {p} died after '{what}' to {port}");
                }
            }
        }
    }
    for (what, req, kind) in bad_requests(&good) {
        let e = describe(&client.infer(req).unwrap_err());
        assert!(e.starts_with(kind), "{what}: got {e}");
        tried += 1;
    }
    // Still serving, on fresh and old connections.
    client.infer(image_request("resnet20", good.clone())).unwrap();
    c.client().infer(image_request("resnet20", good)).unwrap();
    let health = c.client().health().unwrap();
    assert!(health.ok && health.workers.values().all(|&u| u), "{health:?}");
    let mut rss = Vec::new();
    for (i, &p) in procs.iter().enumerate() {
        let grown = rss_mb(p) - rss_before[i];
        assert!(grown < 300.0, "process {p} grew by {grown:.0} MB under hostile input");
        rss.push(format!("{:.0}->{:.0}", rss_before[i], rss_mb(p)));
    }
    eprintln!(
        "RESULT hostile: {tried} hostile inputs to {} ports, 0 processes died; RSS MB (base, caches, frontend) {}",
        ports.len(),
        rss.join(", ")
    );
}

fn inputs(n: usize) -> Arc<Vec<Input>> {
    Arc::new(
        test_images(n)
            .iter()
            .map(|p| Input::Image(std::fs::read(p).unwrap()))
            .collect(),
    )
}

fn load_in_background(endpoint: String, clients: usize, secs: f64) -> std::thread::JoinHandle<Load> {
    let data = inputs(40);
    std::thread::spawn(move || {
        drive(
            &Frontend::plain(&endpoint),
            "resnet20",
            data,
            Pace::Closed { concurrency: clients },
            Until::Duration(Duration::from_secs_f64(secs)),
            1,
        )
    })
}

fn wait_all_up(c: &Cluster, within: Duration) {
    let t = Instant::now();
    loop {
        if let Ok(h) = c.client().health() {
            if h.ok && h.workers.values().all(|&u| u) {
                return;
            }
        }
        assert!(t.elapsed() < within, "workers not all up after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_cache_worker_costs_no_request_and_comes_back() {
    let _serial = serial();
    let c = Cluster::up("distributed");
    let procs = pids(&c); // base, cache workers, frontend
    let victim = procs[1];
    let load = load_in_background(c.endpoint(), 2, 6.0);
    std::thread::sleep(Duration::from_millis(1500));
    sigkill(victim);
    let load = load.join().unwrap();
    assert_eq!(load.failed(), 0, "errors: {:?}", load.errors);
    assert!(
        load.records.len() > 100,
        "only {} requests answered",
        load.records.len()
    );
    // Activations for the dead worker were dropped, not waited for.
    let base_metrics = c.info["metrics"]["base"].as_str().unwrap();
    assert!(metric(base_metrics, "gati_base_activations_dropped_total") > 0.0);
    // `gati up` restarted it; the frontend sees every worker up again.
    wait_all_up(&c, Duration::from_secs(30));
    let fe = c.info["metrics"]["frontend"].as_str().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let workers = cluster_config(&c)["caches"].as_array().unwrap().len() + 1;
    assert_eq!(metric(fe, "gati_worker_up") as usize, workers);
    let after = load_in_background(c.endpoint(), 1, 1.5).join().unwrap();
    assert_eq!(after.failed(), 0);
    assert!(
        after.records.iter().any(|r| r.layer.is_some()),
        "caches answer again after the restart"
    );
    eprintln!(
        "RESULT cache-kill: {} requests under load, SIGKILL of 1 of 2 cache workers, {} failed; {} activations dropped while it was down; restarted, {} more requests, {} failed",
        load.records.len() + load.failed(),
        load.failed(),
        metric(base_metrics, "gati_base_activations_dropped_total"),
        after.records.len(),
        after.failed()
    );
}

#[test]
fn a_slow_cache_worker_never_delays_an_answer() {
    let _serial = serial();
    let c = Cluster::up_with("distributed", &["--fault-cache-delay-ms", "400"]);
    let load = load_in_background(c.endpoint(), 1, 3.0).join().unwrap();
    assert_eq!(load.failed(), 0, "{:?}", load.errors);
    let worst = load.records.iter().map(|r| r.ms).fold(0.0, f64::max);
    assert!(
        worst < 200.0,
        "an answer took {worst:.0} ms: it waited for the 400 ms cache worker"
    );
    assert!(load.records.len() > 30);
    eprintln!(
        "RESULT slow-cache: cache worker delayed 400 ms per lookup; {} requests, {} failed, slowest answer {worst:.1} ms",
        load.records.len(),
        load.failed()
    );
}

#[test]
fn a_killed_base_worker_fails_requests_fast_then_service_resumes() {
    let _serial = serial();
    let c = Cluster::up("inline");
    let base = pids(&c)[0];
    let load = load_in_background(c.endpoint(), 2, 4.0);
    std::thread::sleep(Duration::from_millis(1000));
    sigkill(base);
    let load = load.join().unwrap();
    let kinds: Vec<&String> = load.errors.keys().collect();
    assert!(
        kinds.iter().all(|k| k.as_str() == "Unavailable"),
        "only Unavailable while the base worker is down: {:?}",
        load.errors
    );
    assert!(load.failed() > 0, "requests while the base worker was down failed");
    // Fast: nothing waited for the 5 s deadline.
    let worst = load.records.iter().map(|r| r.ms).fold(0.0, f64::max);
    assert!(worst < 2500.0, "a request took {worst:.0} ms");
    wait_all_up(&c, Duration::from_secs(30));
    let after = load_in_background(c.endpoint(), 1, 1.0).join().unwrap();
    assert_eq!(after.failed(), 0, "{:?}", after.errors);
    assert!(!after.records.is_empty());
    eprintln!(
        "RESULT base-kill: SIGKILL of the base worker under load: {} answered, {} failed with Unavailable, slowest {worst:.0} ms (deadline 5000); after restart {} answered, 0 failed",
        load.records.len(),
        load.failed(),
        after.records.len()
    );
}

#[test]
fn overload_is_refused_with_overloaded_and_latency_recovers() {
    let _serial = serial();
    let c = Cluster::up_with("inline", &["--max-in-flight", "4"]);
    let fe_pid = *pids(&c).last().unwrap();
    let calm = load_in_background(c.endpoint(), 1, 1.5).join().unwrap();
    let cap = load_in_background(c.endpoint(), 2, 2.0).join().unwrap();
    let capacity = cap.records.len() as f64 / cap.elapsed_s;
    let rss0 = rss_mb(fe_pid);
    let data = inputs(40);
    let over = drive(
        &Frontend::plain(&c.endpoint()),
        "resnet20",
        data,
        Pace::Open {
            rate: 2.0 * capacity,
            clients: 32,
        },
        Until::Duration(Duration::from_secs(4)),
        3,
    );
    let refused = *over.errors.get("Overloaded").unwrap_or(&0);
    assert!(
        refused > 0,
        "2x capacity ({capacity:.0} req/s) admitted everything: {:?}",
        over.errors
    );
    assert_eq!(over.failed(), refused, "only Overloaded: {:?}", over.errors);
    let served = over.records.len() as f64 / over.elapsed_s;
    assert!(served > 0.5 * capacity, "served {served:.0} req/s of {capacity:.0}");
    let mut ms: Vec<f64> = over.records.iter().map(|r| r.ms).collect();
    ms.sort_by(f64::total_cmp);
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    assert!(p99 < 1000.0, "admitted p99 {p99:.0} ms");
    assert!(rss_mb(fe_pid) - rss0 < 100.0, "frontend memory grew under overload");
    // Back to calm: latency as before within a couple of seconds.
    std::thread::sleep(Duration::from_millis(500));
    let after = load_in_background(c.endpoint(), 1, 1.5).join().unwrap();
    assert_eq!(after.failed(), 0);
    let p50 = |l: &Load| {
        let mut v: Vec<f64> = l.records.iter().map(|r| r.ms).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(
        p50(&after) < 3.0 * p50(&calm) + 2.0,
        "p50 {:.2} ms after overload vs {:.2} ms before",
        p50(&after),
        p50(&calm)
    );
    eprintln!(
        "RESULT overload: capacity {capacity:.0} req/s; open loop at 2x for 4 s: {} answered ({served:.0} req/s), {refused} Overloaded, admitted p99 {p99:.1} ms; frontend RSS {rss0:.0}->{:.0} MB; p50 {:.2} ms before, {:.2} ms after",
        over.records.len(),
        rss_mb(fe_pid),
        p50(&calm),
        p50(&after)
    );
}

#[test]
fn a_plan_writer_killed_at_any_moment_leaves_a_usable_plan() {
    let _serial = serial();
    let src = plan_dir();
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("plan.json")).unwrap()).unwrap();
    let weights = plan["weights"].as_str().unwrap().to_string();
    let cands = plan["candidates"].as_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("plan");
    let replan = |budget: &str| {
        let mut cmd = gati();
        cmd.args([
            "plan",
            "--model",
            "resnet20",
            "--weights",
            &weights,
            "--candidates",
            &cands,
        ])
        .args([
            "--layers",
            "layer2.1,layer2.2,layer3.0,layer3.1",
            "--variants",
            "conv-pool,gap",
        ])
        .args([
            "--epochs",
            "3",
            "--train-limit",
            "1500",
            "--test-limit",
            "1000",
            "--budget",
            budget,
        ])
        .args(["--threads", "1", "--json", "--out"])
        .arg(&dir)
        .stdout(std::process::Stdio::null());
        cmd
    };
    let first = replan("0.05").status().unwrap();
    assert!(first.success());
    gati_cache::runtime::EarlyExit::load(&dir).unwrap();
    let mut completed = 0;
    for i in 0..8 {
        let budget = if i % 2 == 0 { "0.2" } else { "0.02" };
        let mut child = replan(budget).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300 + 450 * i));
        sigkill(child.id() as i32);
        let status = child.wait().unwrap();
        completed += status.success() as usize;
        let (p, ee) = gati_cache::runtime::EarlyExit::load(&dir)
            .unwrap_or_else(|e| panic!("after a kill at {} ms the plan does not load: {e:#}", 300 + 450 * i));
        assert_eq!(p.caches.len(), ee.caches.len());
        let weight_files = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("caches-"))
            .count();
        assert!(weight_files <= 3, "old weights files are cleaned up: {weight_files}");
    }
    eprintln!("RESULT plan-kill: 8 re-plans killed with SIGKILL at 300..3450 ms ({completed} had finished); the plan loaded after every kill");
}

#[test]
fn a_candidate_writer_killed_at_any_moment_leaves_a_consistent_set() {
    let _serial = serial();
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan_dir().join("plan.json")).unwrap()).unwrap();
    let weights = plan["weights"].as_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let cands = out.path().join("candidates");
    let retrain = |seed: u64| {
        let mut cmd = gati();
        cmd.args(["plan", "--model", "resnet20", "--weights", &weights, "--retrain"])
            .args([
                "--layers",
                "layer2.2,layer3.1",
                "--variants",
                "conv-pool",
                "--epochs",
                "1",
            ])
            .args([
                "--train-limit",
                "300",
                "--test-limit",
                "400",
                "--threads",
                "1",
                "--train-threads",
                "1",
            ])
            .args(["--seed", &seed.to_string(), "--json", "--candidates"])
            .arg(&cands)
            .arg("--out")
            .arg(out.path().join("plan"))
            .stdout(std::process::Stdio::null());
        cmd
    };
    assert!(retrain(0).status().unwrap().success());
    let model = gati_core::BaseModel::load("resnet20", std::path::Path::new(&weights), tch::Device::Cpu).unwrap();
    let sha = gati_core::weights::sha256_file(std::path::Path::new(&weights)).unwrap();
    let test = gati_core::data::load(&gati_core::paths::cifar10_dir().unwrap(), "test", Some(400), (32, 32)).unwrap();
    let (ci, _) = gati_cache::split::calibration_evaluation(&test.labels);
    let calib = test.subset(&ci[..16]);
    for i in 0..5u64 {
        let mut child = retrain(i + 1).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(800 + 700 * i));
        sigkill(child.id() as i32);
        let _ = child.wait();
        let c = gati_cache::candidates::Candidates::load(&cands, &model, &sha)
            .unwrap()
            .expect("a candidate set is on disk");
        // The heads and the outcomes on disk come from the same training: the loaded heads
        // reproduce the stored outcomes.
        let stored = gati_cache::outcomes::Outcomes::record(&model, &c.bank, &calib, 16);
        for h in 0..c.bank.heads.len() {
            for s in 0..calib.len() {
                let (a, b) = (stored.row(h, s), c.calibration.row(h, s));
                let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(
                    diff < 1e-3,
                    "kill {i}: head {h} sample {s}: outcomes differ from the heads by {diff}"
                );
            }
        }
    }
    eprintln!("RESULT candidates-kill: 5 re-trainings killed with SIGKILL at 800..3600 ms; every time the set on disk loaded and its heads reproduced its outcomes");
}

/// SIGTERM, as a rolling update sends it: the frontend stops taking connections, still answers the
/// batch it had admitted, and exits.
#[test]
fn sigterm_lets_admitted_requests_finish_then_the_process_exits() {
    let _serial = serial();
    let c = Cluster::up("inline");
    let fe = *pids(&c).last().unwrap();
    let images: Vec<Vec<u8>> = test_images(300).iter().map(|p| std::fs::read(p).unwrap()).collect();
    let endpoint = c.endpoint();
    let batch = std::thread::spawn(move || {
        let mut client = gati_server::client::connect(&endpoint, Duration::from_secs(60)).unwrap();
        client.infer_batch(images.into_iter().map(|i| image_request("resnet20", i)).collect())
    });
    // Admitted: counted in flight by the frontend.
    let mut watcher = c.client();
    let t = Instant::now();
    while watcher.stats().unwrap().in_flight == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the batch was never admitted");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on a process this test's cluster started.
    unsafe { libc::kill(fe, libc::SIGTERM) };
    let answers = batch.join().unwrap().expect("the admitted batch is answered");
    assert_eq!(answers.len(), 300);
    let t = Instant::now();
    while alive(fe) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the frontend did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
