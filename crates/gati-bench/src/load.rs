//! Load against a Thrift frontend: closed loop (N clients, each sending its next request when the
//! last returns) or open loop (Poisson arrivals, latency counted from the scheduled time so a slow
//! server cannot hide its queueing: no coordinated omission).

use gati_rpc::{InferRequest, Input, TGatiSyncClient};
use gati_server::client::{describe, Frontend};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answered request.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in the request sequence (request `i` carries `inputs[i % inputs.len()]`).
    pub req: usize,
    pub ms: f64,
    pub class: i64,
    /// The cache layer that answered, or `None` for the base model.
    pub layer: Option<String>,
    /// The cache version that answered (hits only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    Closed {
        concurrency: usize,
    },
    /// Poisson arrivals at `rate` per second, spread over `clients` connections.
    Open {
        rate: f64,
        clients: usize,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Exactly this many requests (each position once).
    Requests(usize),
    Duration(Duration),
}

pub struct Load {
    pub records: Vec<Record>,
    /// Failures by kind (`Overloaded`, `connect`, ...).
    pub errors: BTreeMap<String, usize>,
    pub elapsed_s: f64,
}

impl Load {
    pub fn failed(&self) -> usize {
        self.errors.values().sum()
    }
}

/// Sends `inputs` (cycled) for model `model` to `frontend`.
pub fn drive(frontend: &Frontend, model: &str, inputs: Arc<Vec<Input>>, pace: Pace, until: Until, seed: u64) -> Load {
    let clients = match pace {
        Pace::Closed { concurrency } => concurrency.max(1),
        Pace::Open { clients, .. } => clients.max(1),
    };
    let per_client_rate = match pace {
        Pace::Open { rate, .. } => Some(rate / clients as f64),
        Pace::Closed { .. } => None,
    };
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = match until {
        Until::Duration(d) => Some(start + d),
        Until::Requests(_) => None,
    };
    let limit = match until {
        Until::Requests(n) => n,
        Until::Duration(_) => usize::MAX,
    };
    let handles: Vec<_> = (0..clients)
        .map(|w| {
            let (inputs, records, errors, next) = (inputs.clone(), records.clone(), errors.clone(), next.clone());
            let (frontend, model) = (frontend.clone(), model.to_string());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64));
                let mut client = frontend.connect(Duration::from_secs(30)).ok();
                let mut due = Instant::now();
                let count = |kind: &str| *errors.lock().unwrap().entry(kind.to_string()).or_default() += 1;
                loop {
                    if let Some(r) = per_client_rate {
                        due += Duration::from_secs_f64(-(1.0 - rng.gen::<f64>()).ln() / r);
                        if end.is_some_and(|e| due >= e) {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    } else {
                        due = Instant::now();
                        if end.is_some_and(|e| due >= e) {
                            break;
                        }
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit || inputs.is_empty() {
                        break;
                    }
                    let req = InferRequest {
                        model: model.clone(),
                        input: inputs[i % inputs.len()].clone(),
                        request_id: None,
                        deadline_ms: None,
                        top_k: Some(1),
                    };
                    if client.is_none() {
                        client = frontend.connect(Duration::from_secs(5)).ok();
                    }
                    let Some(c) = client.as_mut() else {
                        count("connect");
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    match c.infer(req) {
                        Ok(r) => records.lock().unwrap().push(Record {
                            req: i,
                            ms: due.elapsed().as_secs_f64() * 1e3,
                            class: r.class_index as i64,
                            layer: r.cache_layer,
                            version: r.cache_version,
                        }),
                        Err(e) => {
                            count(describe(&e).split(':').next().unwrap_or("error"));
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
    let elapsed_s = start.elapsed().as_secs_f64();
    let mut records = std::mem::take(&mut *records.lock().unwrap());
    records.sort_by_key(|r| r.req);
    let errors = errors.lock().unwrap().clone();
    Load {
        records,
        errors,
        elapsed_s,
    }
}

/// Share of `records` answered by each cache layer.
pub fn hit_rate_per_layer(records: &[Record]) -> BTreeMap<String, f64> {
    let n = records.len().max(1) as f64;
    let mut per_layer = BTreeMap::new();
    for r in records {
        if let Some(l) = &r.layer {
            *per_layer.entry(l.clone()).or_insert(0.0) += 1.0 / n;
        }
    }
    per_layer
}
