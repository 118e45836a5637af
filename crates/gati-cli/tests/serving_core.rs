//! The serving core on real processes: a run that panics costs only its own request, batches
//! give each item its own answer or error, the dynamic batcher answers like single requests,
//! and the frontend holds thousands of open connections while it serves new clients.

mod common;

use common::{infer_images, metric, plan_dir, rss_mb, test_images, Cluster};
use gati_cache::runtime::{EarlyExit, Exit};
use gati_rpc::{AnswerSource, InferOutcome, InferRequest, Input, TGatiSyncClient, TensorData};
use gati_server::client::{describe, image_request};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn metrics_of(c: &Cluster, role: &str) -> String {
    c.info["metrics"][role].as_str().unwrap().to_string()
}

fn frontend_pid(c: &Cluster) -> i32 {
    c.info["pids"].as_array().unwrap().last().unwrap().as_i64().unwrap() as i32
}

#[test]
fn a_run_that_panics_fails_alone_and_the_worker_keeps_serving() {
    for mode in ["inline", "base-only", "distributed"] {
        let c = Cluster::up_with(mode, &["--fault-panic-request", "boom"]);
        let mut client = c.client();
        let good = std::fs::read(&test_images(1)[0]).unwrap();
        // More panics than the worker has model replicas: a lost replica would wedge it.
        for _ in 0..3 {
            let mut r = image_request("resnet20", good.clone());
            r.request_id = Some("boom".into());
            let e = describe(&client.infer(r).unwrap_err());
            assert!(
                e.starts_with("Unavailable") && e.contains("fault injection"),
                "{mode}: {e}"
            );
        }
        for _ in 0..10 {
            client.infer(image_request("resnet20", good.clone())).unwrap();
        }
        let stats = client.stats().unwrap();
        assert_eq!((stats.in_flight, stats.errors), (0, 3), "{mode}");
        let (base, fe) = (metrics_of(&c, "base"), metrics_of(&c, "frontend"));
        assert_eq!(metric(&base, "gati_base_in_flight"), 0.0, "{mode}");
        assert_eq!(metric(&base, "gati_base_queue_depth"), 0.0, "{mode}");
        assert_eq!(metric(&fe, "gati_in_flight"), 0.0, "{mode}");
        assert_eq!(
            metric(&base, "gati_base_requests_total{outcome=\"failed\"}"),
            3.0,
            "{mode}"
        );
    }
}

fn tensor_request(shape: Vec<i64>) -> InferRequest {
    let n: i64 = shape.iter().product();
    InferRequest::new(
        "resnet20".to_string(),
        Input::Tensor(TensorData::new(shape, vec![0u8; 4 * n as usize], None)),
        None,
        None,
        None,
    )
}

#[test]
fn batches_answer_each_item_like_a_single_request_and_fail_items_alone() {
    let c = Cluster::up("inline");
    let mut client = c.client();
    let images = test_images(12);
    let singles = infer_images(&mut client, &images);
    let mut batch: Vec<InferRequest> = images
        .iter()
        .map(|p| image_request("resnet20", std::fs::read(p).unwrap()))
        .collect();
    batch.insert(3, tensor_request(vec![1, 3, 8, 8]));
    batch.insert(
        7,
        InferRequest::new("nope".to_string(), Input::Image(vec![1]), None, None, None),
    );
    let before = client.stats().unwrap();
    let outcomes = client.infer_each(batch.clone()).unwrap();
    assert_eq!(outcomes.len(), batch.len());
    assert!(
        matches!(&outcomes[3], InferOutcome::Invalid(e) if e.message.contains("shape")),
        "{:?}",
        outcomes[3]
    );
    assert!(matches!(&outcomes[7], InferOutcome::NotFound(_)), "{:?}", outcomes[7]);
    let answered: Vec<_> = outcomes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 7)
        .map(|(_, o)| o.into_result().unwrap())
        .collect();
    for (s, b) in singles.iter().zip(&answered) {
        assert_eq!(
            (s.class_index, s.source, &s.cache_layer),
            (b.class_index, b.source, &b.cache_layer)
        );
        assert!((s.confidence.0 - b.confidence.0).abs() < 1e-4);
    }
    let after = client.stats().unwrap();
    assert_eq!(after.requests - before.requests, 14);
    assert_eq!(after.errors - before.errors, 2);

    // infer_batch is all or nothing: a bad item is refused, naming it, before anything runs.
    let e = describe(&client.infer_batch(batch.clone()).unwrap_err());
    assert!(e.starts_with("InvalidInput") && e.contains("requests[3]"), "{e}");
    assert_eq!(
        client.stats().unwrap().requests - after.requests,
        1,
        "only the refusal counts"
    );
    batch.remove(7);
    batch.remove(3);
    let all = client.infer_batch(batch).unwrap();
    assert_eq!(all.len(), 12);
    assert!(all.iter().zip(&singles).all(|(a, s)| a.class_index == s.class_index));
}

#[test]
fn the_dynamic_batcher_groups_concurrent_requests_and_answers_as_in_process() {
    let c = Cluster::up_with("inline", &["--max-batch", "8", "--max-batch-delay-ms", "5"]);
    let ee = EarlyExit::load(plan_dir()).unwrap().1;
    let images = test_images(64);
    let endpoint = c.endpoint();
    let answers: Vec<Vec<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .chunks(8)
            .map(|chunk| {
                let ep = endpoint.clone();
                s.spawn(move || {
                    let mut client = gati_server::client::connect(&ep, Duration::from_secs(30)).unwrap();
                    chunk
                        .iter()
                        .map(|p| {
                            client
                                .infer(image_request("resnet20", std::fs::read(p).unwrap()))
                                .unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_answered_as_in_process(&ee, &images, answers.iter().flatten());
    let base = metrics_of(&c, "base");
    let runs = metric(&base, "gati_base_batch_size_count");
    let requests = metric(&base, "gati_base_batch_size_sum");
    assert_eq!(requests, 64.0);
    assert!(
        runs < 64.0,
        "8 concurrent clients never shared a base run ({runs} runs)"
    );
    eprintln!("RESULT batcher: 64 requests from 8 clients in {runs} base runs");
}

/// Each served answer has the class and exit of the plan's early exit run in this process.
fn assert_answered_as_in_process<'a>(
    ee: &EarlyExit,
    images: &[std::path::PathBuf],
    answers: impl IntoIterator<Item = &'a gati_rpc::InferResponse>,
) {
    let mut n = 0;
    for (p, r) in images.iter().zip(answers) {
        let px = gati_core::data::decode_image(&std::fs::read(p).unwrap(), 32, 32).unwrap();
        let local = ee.infer(&ee.model.preprocess(&tch::Tensor::from_slice(&px).view([1, 3, 32, 32])));
        assert_eq!(r.class_index as usize, local.class, "{}", p.display());
        match local.exit {
            Exit::Cache(i) => assert_eq!(r.cache_layer.as_deref(), Some(ee.caches[i].layer.as_str())),
            Exit::Base => assert_eq!(r.source, AnswerSource::BASE),
            Exit::Memory => unreachable!("the test plan has no memory cache"),
        }
        n += 1;
    }
    assert_eq!(n, images.len(), "an answer per image");
}

/// `gati up --base-in-frontend`: one process serves, with the answers of the plan in-process; a
/// run that panics fails alone; the base worker's Thrift service (the trainer's and `gati
/// admin`'s way in) and its metrics stay available.
#[test]
fn a_base_worker_in_the_frontends_process_answers_as_in_process() {
    use gati_rpc::TBaseWorkerSyncClient;
    let c = Cluster::up_with("inline", &["--base-in-frontend", "--fault-panic-request", "boom"]);
    assert_eq!(c.info["pids"].as_array().unwrap().len(), 1, "{}", c.info);
    assert!(c.info["metrics"]["base"].is_null(), "{}", c.info);
    let ee = EarlyExit::load(plan_dir()).unwrap().1;
    let images = test_images(32);
    let mut client = c.client();
    let answers = infer_images(&mut client, &images);
    assert_answered_as_in_process(&ee, &images, &answers);
    assert!(answers.iter().any(|r| r.source == AnswerSource::CACHE), "no cache hit");
    let mut r = image_request("resnet20", std::fs::read(&images[0]).unwrap());
    r.request_id = Some("boom".into());
    let e = describe(&client.infer(r).unwrap_err());
    assert!(e.starts_with("Unavailable") && e.contains("fault injection"), "{e}");
    client
        .infer(image_request("resnet20", std::fs::read(&images[0]).unwrap()))
        .unwrap();

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.info["config"].as_str().unwrap()).unwrap()).unwrap();
    let (i, o) =
        gati_server::net::connect(config["base"]["listen"].as_str().unwrap(), Some(Duration::from_secs(5))).unwrap();
    let mut base = gati_rpc::BaseWorkerSyncClient::new(i, o);
    assert!(base.health().unwrap().ok);
    assert_eq!(base.serving_version().unwrap(), "v0");
    let fe = metrics_of(&c, "frontend");
    assert_eq!(metric(&fe, "gati_base_requests_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(metric(&fe, "gati_base_requests_total"), 34.0);
    assert_eq!(metric(&fe, "gati_base_in_flight"), 0.0);
}

/// Opens `n` idle connections to `addr`, from the loopback addresses 127.0.0.2 and up (a
/// thousand each: the per-peer limit is per address).
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            Bound(format!("127.0.0.{}:0", 2 + i / 1000).parse().unwrap())
                .connect(addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect()
}

/// A TCP socket bound to `local` before it connects.
struct Bound(SocketAddr);

impl Bound {
    fn connect(self, to: SocketAddr) -> std::io::Result<TcpStream> {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(local) = self.0 else {
            unreachable!("IPv4 loopback")
        };
        let SocketAddr::V4(to) = to else {
            unreachable!("IPv4 loopback")
        };
        let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a fresh socket, bound and connected with valid sockaddr_in values; on success
        // the TcpStream owns the descriptor.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (l, t) = (sin(local), sin(to));
            if libc::bind(fd, &l as *const _ as *const libc::sockaddr, len) != 0
                || libc::connect(fd, &t as *const _ as *const libc::sockaddr, len) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(TcpStream::from_raw_fd(fd))
        }
    }
}

/// True once the server has closed `s` (end of file or a reset), waiting at most `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn the_frontend_holds_thousands_of_idle_connections_and_still_serves_new_clients() {
    gati_server::net::raise_fd_limit();
    let c = Cluster::up_with("inline", &["--idle-timeout-ms", "60000"]);
    let addr: SocketAddr = c.endpoint().parse().unwrap();
    let good = std::fs::read(&test_images(1)[0]).unwrap();
    c.client().infer(image_request("resnet20", good.clone())).unwrap();
    let pid = frontend_pid(&c);
    let rss0 = rss_mb(pid);
    let t = Instant::now();
    let idle = idle_connections(addr, 5000);
    let opened_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_mb(pid);
    // A new client is served at once while they sit open.
    let t = Instant::now();
    let mut client = c.client();
    for _ in 0..20 {
        client.infer(image_request("resnet20", good.clone())).unwrap();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / 20.0;
    assert!(ms < 200.0, "{ms:.1} ms per request with 5,000 idle connections open");
    assert!(rss1 - rss0 < 200.0, "frontend RSS grew {rss0:.0} -> {rss1:.0} MB");
    // The per-peer limit (1,024) closes a 1,025th connection from one address.
    let mut extra: Vec<_> = (0..1030)
        .map(|_| Bound("127.0.0.20:0".parse().unwrap()).connect(addr).unwrap())
        .collect();
    let last = extra.last_mut().unwrap();
    assert!(
        closed_within(last, Duration::from_secs(5)),
        "the per-peer limit let a 1,030th connection stay"
    );
    eprintln!(
        "RESULT connections: 5,000 idle connections opened in {opened_s:.1} s; frontend RSS {rss0:.0} -> {rss1:.0} MB; a new client's requests took {ms:.1} ms each meanwhile"
    );
    drop(idle);
}

#[test]
fn idle_and_slow_connections_time_out() {
    let c = Cluster::up_with("inline", &["--idle-timeout-ms", "300", "--frame-timeout-ms", "300"]);
    let addr: SocketAddr = c.endpoint().parse().unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "an idle connection stayed open"
    );
    // Half a length prefix, then nothing: a slow (or stuck) client is cut off too.
    let mut slow = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut slow, &[0, 0]).unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "a stalled request stayed open"
    );
    // A pooled client connection closed by the server while idle is replaced, not failed on.
    let mut client = c.client();
    let good = std::fs::read(&test_images(1)[0]).unwrap();
    client.infer(image_request("resnet20", good.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The frontend's own pooled connection to the base worker idled out too: still answered.
    let mut fresh = c.client();
    fresh.infer(image_request("resnet20", good)).unwrap();
}

#[test]
fn deadlines_top_k_and_queue_time_hold_in_every_mode() {
    let good = std::fs::read(&test_images(1)[0]).unwrap();
    let images: Vec<Vec<u8>> = test_images(40).iter().map(|p| std::fs::read(p).unwrap()).collect();
    // "online": inline with the trainer learning from the traffic; the contract is the same.
    let state = tempfile::tempdir().unwrap();
    for mode in ["inline", "base-only", "distributed", "online"] {
        let c = match mode {
            "online" => Cluster::up_with("inline", &["--online", "--state-dir", state.path().to_str().unwrap()]),
            m => Cluster::up(m),
        };
        let mut client = c.client();
        // top_k: k entries whoever answers (distributed cache hits included); out of range refused.
        let mut hits = 0;
        for img in &images {
            let mut r = image_request("resnet20", img.clone());
            r.top_k = Some(3);
            let t = Instant::now();
            let resp = client.infer(r).unwrap();
            // The server's total is within what the client saw, less only the loopback hops.
            let observed = t.elapsed().as_secs_f64() * 1e3;
            let tm = &resp.timing;
            assert!(
                tm.total_ms.0 <= observed + 0.5,
                "{mode}: {tm:?} vs observed {observed:.2} ms"
            );
            assert!(
                observed - tm.total_ms.0 < 25.0,
                "{mode}: {tm:?} vs observed {observed:.2} ms"
            );
            assert!(
                tm.preprocess_ms.0 + tm.queue_ms.0 + tm.base_ms.0 <= tm.total_ms.0 + 0.5,
                "{mode}: {tm:?}"
            );
            assert_eq!(resp.top_k.len(), 3, "{mode}: {:?}", resp.source);
            assert_eq!(resp.top_k[0].class_index, resp.class_index, "{mode}");
            assert!(
                resp.top_k.windows(2).all(|w| w[0].confidence.0 >= w[1].confidence.0),
                "{mode}"
            );
            hits += (resp.source == AnswerSource::CACHE) as usize;
        }
        assert_eq!(hits > 0, mode != "base-only", "{mode}: {hits} cache hits in 40 images");
        for k in [0, -1, 11] {
            let mut r = image_request("resnet20", good.clone());
            r.top_k = Some(k);
            let e = describe(&client.infer(r).unwrap_err());
            assert!(
                e.starts_with("InvalidInput") && e.contains("1 to 10"),
                "{mode}: top_k {k}: {e}"
            );
        }
        // infer_each: the bad item fails alone, typed; the others are answered.
        let mut batch: Vec<InferRequest> = images[..4]
            .iter()
            .map(|i| image_request("resnet20", i.clone()))
            .collect();
        batch.insert(2, tensor_request(vec![1, 3, 8, 8]));
        let outcomes = client.infer_each(batch).unwrap();
        assert!(
            matches!(&outcomes[2], InferOutcome::Invalid(_)),
            "{mode}: {:?}",
            outcomes[2]
        );
        let answered = outcomes
            .into_iter()
            .filter(|o| matches!(o, InferOutcome::Response(_)))
            .count();
        assert_eq!(answered, 4, "{mode}");
        // A deadline shorter than the model's latency (a third and half of the fastest of three
        // requests just sent, at least 1 ms): DeadlineExceeded, soon after the deadline.
        let full_ms = (0..3)
            .map(|_| {
                let r = client.infer(image_request("resnet20", good.clone())).unwrap();
                r.timing.total_ms.0
            })
            .fold(f64::INFINITY, f64::min);
        for deadline in [(full_ms / 3.0) as i64, (full_ms / 2.0) as i64].map(|d| d.max(1)) {
            let mut r = image_request("resnet20", good.clone());
            r.deadline_ms = Some(deadline);
            let t = Instant::now();
            let e = describe(&client.infer(r).unwrap_err());
            let took = t.elapsed().as_secs_f64() * 1e3;
            assert!(e.starts_with("DeadlineExceeded"), "{mode}: deadline {deadline} ms: {e}");
            assert!(
                took < deadline as f64 + 50.0,
                "{mode}: DeadlineExceeded after {took:.1} ms for {deadline} ms"
            );
        }
        let mut r = image_request("resnet20", good.clone());
        r.deadline_ms = Some(5000);
        client.infer(r).unwrap();
        // Under load the wait for the model replica shows as queue_ms, not base_ms.
        if mode != "distributed" {
            let endpoint = c.endpoint();
            let timings: Vec<gati_rpc::Timing> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        let (ep, imgs) = (endpoint.clone(), images.clone());
                        s.spawn(move || {
                            let mut cl = gati_server::client::connect(&ep, Duration::from_secs(30)).unwrap();
                            imgs.into_iter()
                                .map(|i| cl.infer(image_request("resnet20", i)).unwrap().timing)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            let queued = timings.iter().filter(|t| t.queue_ms.0 > 0.5).count();
            assert!(
                queued > timings.len() / 4,
                "{mode}: {queued} of {} requests queued",
                timings.len()
            );
            for t in &timings {
                assert!(t.queue_ms.0 + t.base_ms.0 <= t.total_ms.0 + 0.5, "{mode}: {t:?}");
            }
        }
    }
}

#[test]
fn model_info_says_how_to_normalise_and_a_client_doing_so_gets_the_image_answer() {
    let c = Cluster::up("inline");
    let mut client = c.client();
    let info = client.models().unwrap().remove(0);
    assert_eq!(info.input_shape, vec![3, 32, 32]);
    assert_eq!(info.input_layout.as_deref(), Some("NCHW"));
    assert_eq!(info.budget_unit.as_deref(), Some("fidelity"));
    let (mean, std) = (info.mean.unwrap(), info.std.unwrap());
    for path in test_images(20) {
        let bytes = std::fs::read(&path).unwrap();
        let from_image = client.infer(image_request("resnet20", bytes.clone())).unwrap();
        // The client's own preprocessing, from ModelInfo alone (float32, as the wire carries it).
        let px = gati_core::data::decode_image(&bytes, 32, 32).unwrap();
        let data: Vec<u8> = px
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                let ch = i / (32 * 32);
                ((v as f32 / 255.0 - mean[ch].0 as f32) / std[ch].0 as f32).to_le_bytes()
            })
            .collect();
        let raw = InferRequest::new(
            "resnet20".to_string(),
            Input::Tensor(TensorData::new(vec![3, 32, 32], data, None)),
            None,
            None,
            None,
        );
        let from_tensor = client.infer(raw).unwrap();
        assert_eq!(
            (from_image.class_index, &from_image.cache_layer),
            (from_tensor.class_index, &from_tensor.cache_layer),
            "{}",
            path.display()
        );
        assert_eq!(
            from_image.confidence,
            from_tensor.confidence,
            "bit for bit: {}",
            path.display()
        );
    }
}

/// (status code, body) of `GET path` on `addr`.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/health` says the process is alive; `/ready` whether it can answer: a frontend whose base
/// worker is not there yet is alive but not ready, and becomes ready once the worker is up. Its
/// log is structured: JSON lines with time and level, one per failed request.
#[test]
fn a_frontend_without_its_base_worker_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("127.0.0.1:{}", free_port());
    let config = serde_json::json!({
        "plan": plan_dir(), "mode": "inline", "selector": "127.0.0.1:0",
        "frontend": {"listen": "127.0.0.1:0", "metrics": "127.0.0.1:0"},
        "base": {"listen": base},
    });
    let path = dir.path().join("cluster.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let serve = |role: &str| {
        common::gati()
            .args(["serve", role, "--config", path.to_str().unwrap()])
            .env("GATI_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut frontend = serve("frontend");
    // Its log: one JSON object per line, with time and level (read on a thread, so that a
    // missing line fails the test instead of hanging it).
    let (tx, logs) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = std::io::BufReader::new(frontend.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
            let _ = tx.send(v);
        }
    });
    let next = |what: &str, pick: &dyn Fn(&serde_json::Value) -> Option<String>| loop {
        let v = logs
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no log line {what}"));
        if let Some(x) = pick(&v) {
            break x;
        }
    };
    let message = |prefix: &'static str| {
        move |v: &serde_json::Value| Some(v["message"].as_str()?.strip_prefix(prefix)?.to_string())
    };
    let metrics = next("metrics on", &message("metrics on http://"))
        .trim_end_matches("/metrics")
        .to_string();
    let endpoint = next("frontend on", &message("frontend on "));
    assert_eq!(http_get(&metrics, "/health"), (200, "ok\n".into()));
    assert_eq!(http_get(&metrics, "/ready").0, 503);
    let mut worker = serve("base");
    let t = Instant::now();
    while http_get(&metrics, "/ready").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not ready 60 s after the base worker started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A failed request is one warning line with its id, the exception and why.
    let mut client = gati_server::client::connect(&endpoint, Duration::from_secs(10)).unwrap();
    let mut bad = image_request("no-such-model", std::fs::read(&test_images(1)[0]).unwrap());
    bad.request_id = Some("bad-1".into());
    assert!(client.infer(bad).is_err());
    let line = next("for the failed request", &|v| {
        (v["request_id"] == "bad-1").then(|| v.to_string())
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["level"].as_str(), v["kind"].as_str()),
        (Some("WARN"), Some("ModelNotFound")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("no-such-model"), "{v}");
    for p in [&mut frontend, &mut worker] {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// The test plan's cache layers.
fn plan_layers() -> Vec<String> {
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan_dir().join("plan.json")).unwrap()).unwrap();
    plan["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["layer"].as_str().unwrap().to_string())
        .collect()
}

/// A deployment addressed by host names, as in compose or Kubernetes: every role listens on all
/// interfaces and is dialled by name (`localhost` here); the selector is named, not compared by
/// address, so the cache workers' reports reach it and requests hit.
#[test]
fn a_cluster_addressed_by_host_names_gets_its_cache_reports() {
    let dir = tempfile::tempdir().unwrap();
    let layers = plan_layers();
    let [front, metrics, sel, base, cache] = [(); 5].map(|_| free_port());
    let config = serde_json::json!({
        "plan": plan_dir(), "mode": "distributed",
        "selector": format!("0.0.0.0:{sel}"), "selector_advertise": format!("localhost:{sel}"),
        "frontend": {"listen": format!("0.0.0.0:{front}"), "advertise": format!("localhost:{front}"),
                     "metrics": format!("127.0.0.1:{metrics}")},
        "base": {"listen": format!("0.0.0.0:{base}"), "advertise": format!("localhost:{base}")},
        "caches": [{"listen": format!("0.0.0.0:{cache}"), "advertise": format!("localhost:{cache}"),
                    "layers": layers}],
        "complete_on_hit_fraction": 0.0,
    });
    let path = dir.path().join("cluster.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let mut procs: Vec<std::process::Child> = ["cache", "base", "frontend"]
        .iter()
        .map(|role| {
            common::gati()
                .args(["serve", role, "--config", path.to_str().unwrap()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let m = format!("127.0.0.1:{metrics}");
    let t = Instant::now();
    while std::net::TcpStream::connect(&m).is_err() || http_get(&m, "/ready").0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(90), "not ready after 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Wait for the cache worker too: its first lookups must not be lost to a slow start.
    while std::net::TcpStream::connect(format!("127.0.0.1:{cache}")).is_err() {
        assert!(t.elapsed() < Duration::from_secs(90), "cache worker not up after 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut client = gati_server::client::connect(&format!("localhost:{front}"), Duration::from_secs(10)).unwrap();
    let n = 20;
    for path in test_images(n) {
        client
            .infer(image_request("resnet20", std::fs::read(path).unwrap()))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    // Every request streams its first cache layer's activation, so each brings at least one report.
    let reports = metric(&m, "gati_cache_hits_total")
        + metric(&m, "gati_cache_misses_total")
        + metric(&m, "gati_late_reports_total");
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(reports >= n as f64, "{reports} cache reports for {n} requests");
}

/// Cache layers in the config are checked against the plan at start, naming what is wrong: a
/// worker serving a layer the plan has no cache at, and a plan layer no worker serves.
#[test]
fn cache_layers_that_disagree_with_the_plan_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let layers = plan_layers();
    let unserved = layers.last().unwrap().clone();
    // Every role checks (one implementation); each case is tried on another role.
    for (role, caches, expect) in [
        (
            "frontend",
            serde_json::json!([{"listen": "127.0.0.1:1", "layers": ["layer9.9"]}]),
            vec!["caches[0].layers", "layer9.9"],
        ),
        (
            "base",
            serde_json::json!([{"listen": "127.0.0.1:1", "layers": layers[..layers.len() - 1]}]),
            vec![unserved.as_str(), "served by 0 cache workers"],
        ),
    ] {
        let config = serde_json::json!({
            "plan": plan_dir(), "mode": "distributed", "selector": "127.0.0.1:0",
            "frontend": {"listen": "127.0.0.1:0"}, "base": {"listen": "127.0.0.1:1"},
            "caches": caches,
        });
        let path = dir.path().join("cluster.json");
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let out = common::gati()
            .args(["serve", role, "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role} started");
        assert!(expect.iter().all(|e| err.contains(e)), "{role}: {err}");
    }
}

/// A throwaway certificate authority and certificates it signs, as PEM files in `dir`.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(dir: &std::path::Path, name: &str) -> (Self, std::path::PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (Self { cert, key }, path)
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by this CA: (cert, key) files.
    fn issue(&self, dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn tls_frontend(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> gati_server::client::Frontend {
    gati_server::client::Frontend {
        addr: addr.to_string(),
        tls: Some(gati_server::tls::client_config(ca, identity.map(|(c, k)| (c.as_path(), k.as_path()))).unwrap()),
    }
}

/// Mutual TLS on every link, certificates from a CA made here: clients without a certificate
/// the CA signed are refused at the public and at the internal services, a client that does not
/// trust the CA refuses the cluster, and the answers are those of the base model and caches
/// in-process (inline) and come from the cache workers through the selector (distributed).
#[test]
fn tls_links_refuse_peers_without_a_valid_certificate_and_leave_answers_unchanged() {
    use gati_rpc::TBaseWorkerSyncClient;
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = TestCa::new(dir.path(), "ca");
    let node = ca.issue(dir.path(), "node");
    let (intruder_ca, intruder_ca_file) = TestCa::new(dir.path(), "intruder-ca");
    let intruder = intruder_ca.issue(dir.path(), "intruder");
    let tls_args = |public: &'static str| {
        [
            "--tls-ca".to_string(),
            ca_file.display().to_string(),
            "--tls-cert".into(),
            node.0.display().to_string(),
            "--tls-key".into(),
            node.1.display().to_string(),
            "--tls-public".into(),
            public.into(),
        ]
    };
    let ee = EarlyExit::load(plan_dir()).unwrap().1;
    let images = test_images(24);

    // Inline, public service mutual: answers as in-process.
    let args = tls_args("mutual");
    let c = Cluster::up_with("inline", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let endpoint = c.endpoint();
    let mut client = tls_frontend(&endpoint, &ca_file, Some(&node))
        .connect(Duration::from_secs(30))
        .unwrap();
    for p in &images {
        let r = client
            .infer(image_request("resnet20", std::fs::read(p).unwrap()))
            .unwrap();
        let px = gati_core::data::decode_image(&std::fs::read(p).unwrap(), 32, 32).unwrap();
        let local = ee.infer(&ee.model.preprocess(&tch::Tensor::from_slice(&px).view([1, 3, 32, 32])));
        assert_eq!(r.class_index as usize, local.class, "{}", p.display());
        match local.exit {
            Exit::Cache(i) => assert_eq!(r.cache_layer.as_deref(), Some(ee.caches[i].layer.as_str())),
            _ => assert_eq!(r.source, AnswerSource::BASE),
        }
    }
    // Python's Thrift (the packaged client over TSSLSocket) gets the same answer; without its
    // certificate it is refused.
    let python = |with_cert: bool| {
        let code = "import os, sys\nfrom gati_client import Client\n\
            cert = (os.environ['CERT'], os.environ['KEY']) if sys.argv[1] == '1' else (None, None)\n\
            with Client(os.environ['EP'], retries=0, tls_ca=os.environ['CA'], tls_cert=cert[0], tls_key=cert[1]) as c:\n\
            \x20   print(c.infer(os.environ['IMAGE']).class_index)\n";
        std::process::Command::new(gati_core::weights::python())
            .args(["-c", code, if with_cert { "1" } else { "0" }])
            .env("PYTHONPATH", gati_core::paths::project_root().join("clients/python"))
            .env("EP", &endpoint)
            .env("CA", &ca_file)
            .env("CERT", &node.0)
            .env("KEY", &node.1)
            .env("IMAGE", &images[0])
            .output()
            .unwrap()
    };
    let out = python(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = client
        .infer(image_request("resnet20", std::fs::read(&images[0]).unwrap()))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        first.class_index.to_string()
    );
    assert!(
        !python(false).status.success(),
        "Python without a client certificate was served"
    );
    // Refused at the public service: plain Thrift, TLS without a certificate, a certificate from
    // another CA; and a client that trusts only another CA refuses the frontend.
    let refused = |f: gati_server::client::Frontend, what: &str| {
        let e = f
            .connect(Duration::from_secs(5))
            .and_then(|mut c| c.models())
            .map(|_| ())
            .expect_err(what);
        eprintln!("refused ({what}): {}", describe(&e));
    };
    refused(gati_server::client::Frontend::plain(&endpoint), "plain client");
    refused(tls_frontend(&endpoint, &ca_file, None), "no client certificate");
    refused(
        tls_frontend(&endpoint, &ca_file, Some(&intruder)),
        "certificate from another CA",
    );
    refused(
        tls_frontend(&endpoint, &intruder_ca_file, Some(&intruder)),
        "frontend not trusted",
    );
    // Refused at an internal service (the base worker), accepted with the cluster's certificate.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.info["config"].as_str().unwrap()).unwrap()).unwrap();
    let base = config["base"]["listen"].as_str().unwrap();
    let health = |tls: Option<std::sync::Arc<rustls::ClientConfig>>| {
        let credentials = gati_server::net::Credentials { token: None, tls };
        gati_server::net::Pool::new(
            base,
            Some(Duration::from_secs(5)),
            credentials,
            gati_rpc::BaseWorkerSyncClient::new,
        )
        .call(|b| b.health())
    };
    assert!(health(None).is_err(), "a plain client reached the base worker");
    let client_config = |ca: &std::path::Path, id: &(std::path::PathBuf, std::path::PathBuf)| {
        Some(gati_server::tls::client_config(ca, Some((id.0.as_path(), id.1.as_path()))).unwrap())
    };
    assert!(
        health(client_config(&ca_file, &intruder)).is_err(),
        "a certificate from another CA reached the base worker"
    );
    assert!(health(client_config(&ca_file, &node)).unwrap().ok);
    drop(c);

    // Distributed, public service TLS without client certificates: hits travel base worker →
    // cache worker → selector over TLS.
    let args = tls_args("tls");
    let c = Cluster::up_with("distributed", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut client = tls_frontend(&c.endpoint(), &ca_file, None)
        .connect(Duration::from_secs(30))
        .unwrap();
    // Distributed hits race the base model: send until some arrive (at most 4 rounds).
    let (mut hits, mut sent) = (0, 0);
    for p in images.iter().cycle().take(4 * images.len()) {
        let r = client
            .infer(image_request("resnet20", std::fs::read(p).unwrap()))
            .unwrap();
        hits += usize::from(r.source == AnswerSource::CACHE);
        sent += 1;
        if hits >= 3 {
            break;
        }
    }
    assert!(
        hits > 0,
        "no cache hit reached the selector over TLS in {sent} requests"
    );
    eprintln!("RESULT tls distributed: {hits}/{sent} answered by cache workers");
}

/// `--device` and `device` in the config: a GPU this process cannot use stops the role at start
/// with one line naming the device (never a silent CPU run); a device on the frontend is refused.
#[test]
fn a_role_asked_to_run_on_a_missing_gpu_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let [front, sel, base, cache] = [(); 4].map(|_| free_port());
    let config = |base_device: &str, frontend_device: &str| {
        serde_json::json!({
            "plan": plan_dir(), "mode": "distributed",
            "selector": format!("127.0.0.1:{sel}"),
            "frontend": {"listen": format!("127.0.0.1:{front}"), "device": frontend_device},
            "base": {"listen": format!("127.0.0.1:{base}"), "device": base_device},
            "caches": [{"listen": format!("127.0.0.1:{cache}"), "layers": plan_layers()}],
        })
    };
    // cuda:0 where this libtorch sees no GPU (CI, this machine); else one beyond the last.
    let missing = if tch::Cuda::is_available() {
        format!("cuda:{}", tch::Cuda::device_count())
    } else {
        "cuda:0".to_string()
    };
    let path = dir.path().join("cluster.json");
    let serve = |role: &str, config: serde_json::Value, extra: &[&str]| {
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let out = common::gati()
            .args(["serve", role, "--config", path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role} started");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    for (role, cfg, extra) in [
        ("base", config(&missing, "cpu"), vec![]),
        ("base", config("cpu", "cpu"), vec!["--device", missing.as_str()]),
        ("cache", config("cpu", "cpu"), vec!["--device", missing.as_str()]),
    ] {
        let e = serve(role, cfg, &extra);
        assert!(
            e.contains(&format!("device {missing}")) && e.contains("CUDA"),
            "{role}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = serve("frontend", config("cpu", "cuda"), &[]);
    assert!(e.contains("frontend.device cuda:0"), "{e}");
    let e = serve("base", config("gpu", "cpu"), &[]);
    assert!(e.contains("device 'gpu'"), "{e}");
    let e = serve("base", config("cpu", "cpu"), &["--device", "gpu"]);
    assert!(e.contains("'gpu'"), "{e}");
}
