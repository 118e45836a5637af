//! Memory caches: a bounded store of recent requests' keys (a pooled, normalised activation at one
//! layer) with the answer the base model gave them, and a nearest-neighbour lookup. A request whose
//! nearest stored key is close enough, and whose stored answer the base model was sure of, gets that
//! answer and skips the rest of the network: what repeated and near-duplicate traffic (camera
//! frames, the same people again) offers and ten-way heads cannot use.
//!
//! The store holds the answers the base model gave on complete runs and, where the planner found it
//! pays within budget (`remember_cache_hits`), the learned caches' hits; `min_confidence` keeps
//! hits to stored answers that were sure, where the base model is stable under small
//! perturbations. Search is exact (one matrix product over the store) up to `EXACT_MAX_ENTRIES`
//! entries, and through an inverted-file index (`ivf`) in larger stores.

use crate::ivf::Ivf;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Largest store `MemoryIndex::Auto` searches exactly: about 0.15 ms at batch 1 for keys of 256
/// values; a matrix product over 30,000 keys takes 3–3.5 ms (it reads the whole store).
pub const EXACT_MAX_ENTRIES: usize = 8192;

/// How a store finds its nearest keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryIndex {
    /// Exact up to `EXACT_MAX_ENTRIES` entries, the inverted-file index above.
    #[default]
    Auto,
    /// One matrix product over every stored key.
    Exact,
    /// An inverted-file index: the keys under the query's nearest centroids only (approximate).
    Ivf,
}

impl gati_core::names::Named for MemoryIndex {
    fn what() -> &'static str {
        "memory index"
    }
}

/// Largest key length: the activation is average-pooled to the largest grid (4x4, 2x2, 1x1) whose
/// key has at most this many values.
pub const MAX_KEY_DIMS: i64 = 512;

/// Where a memory cache sits and when it answers (`plan.json`'s `memory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySpec {
    pub layer: String,
    pub stage: usize,
    /// Side of the pooling grid of the key.
    pub grid: i64,
    /// Cosine similarity the nearest stored key must reach.
    pub min_similarity: f32,
    /// Confidence the base model must have had in the stored answer.
    pub min_confidence: f32,
    /// Bytes the store may hold (keys, answers and bookkeeping).
    pub max_bytes: u64,
    /// Stored entries at least `min_similarity` close that must name the same class (1: the
    /// nearest alone). Two or more: the item was seen before and answered the same way each time,
    /// so the base model is stable on it.
    #[serde(default = "one")]
    pub min_votes: usize,
    /// On a hit, the entry's key moves to the query's (its answer stays): an entry follows an
    /// object through the frames of a video, where each frame is nearest to the last.
    #[serde(default)]
    pub follow_hits: bool,
    /// Also store the answers of the learned caches' hits (with the cache's confidence), not only
    /// the base model's: a request a learned cache answered early is then remembered for its
    /// repeats. The planner measures on the stream what that costs in fidelity.
    #[serde(default)]
    pub remember_cache_hits: bool,
    /// How the store is searched.
    #[serde(default)]
    pub index: MemoryIndex,
    /// The hit rate below which lookups do not pay for themselves (the lookup's cost over the
    /// time a hit saves; `gati plan-memory` measures both). While fewer of the recent lookups hit,
    /// only one request in `GATE_PROBE_EVERY` is looked up; the others skip the search (their
    /// answers are still stored). 0: every request is looked up.
    #[serde(default)]
    pub min_hit_rate: f64,
}

fn one() -> usize {
    1
}

/// Neighbours a lookup returns: enough for any vote the planner tries.
pub const NEIGHBOURS: usize = 3;

/// A stored entry near a query: its similarity, class and confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub similarity: f32,
    pub class: usize,
    pub confidence: f32,
}

/// The one hit rule (serving and the planner's replay), on the nearest stored entries (best
/// first): the nearest is close enough and was a sure answer, at least `min_votes` entries are
/// close enough, and all close ones agree.
pub fn decide(nearest: &[Neighbour], min_similarity: f32, min_confidence: f32, min_votes: usize) -> Option<usize> {
    let first = nearest.first()?;
    let close: Vec<&Neighbour> = nearest.iter().filter(|n| n.similarity >= min_similarity).collect();
    let agree = close.iter().all(|n| n.class == first.class);
    (first.similarity >= min_similarity && first.confidence >= min_confidence && close.len() >= min_votes && agree)
        .then_some(first.class)
}

impl MemorySpec {
    /// Entries that fit in `max_bytes` with keys of `dims` values and answers over `classes`,
    /// and whether the store needs the inverted-file index to search them.
    pub fn capacity(&self, dims: i64, classes: i64) -> (usize, bool) {
        capacity(self.max_bytes, dims, classes, self.index)
    }
}

/// Entries that fit in `max_bytes` with keys of `dims` values and answers over `classes` (with
/// the index's own bytes where `index` asks for one), and whether it does.
pub fn capacity(max_bytes: u64, dims: i64, classes: i64, index: MemoryIndex) -> (usize, bool) {
    let plain = (max_bytes / entry_bytes(dims, classes)) as usize;
    let ivf = match index {
        MemoryIndex::Auto => plain > EXACT_MAX_ENTRIES,
        MemoryIndex::Exact => false,
        MemoryIndex::Ivf => true,
    };
    if !ivf {
        return (plain, false);
    }
    let fits = |n: usize| n as u64 * entry_bytes(dims, classes) + Ivf::bytes_for(n, dims) <= max_bytes;
    let mut n = plain;
    while n > 0 && !fits(n) {
        n -= 1 + n / 1000;
    }
    (n, true)
}

/// Bytes one entry takes: its key, its answer's softmax row, class, confidence and recency (its
/// last use, and its place in the store's recency order: 16 bytes and about as much B-tree).
pub fn entry_bytes(dims: i64, classes: i64) -> u64 {
    (4 * dims + 4 * classes + 56) as u64
}

/// The pooling grid for an activation of `channels` x `height`: 4x4, 2x2 or 1x1.
pub fn key_grid(channels: i64, height: i64) -> i64 {
    [4, 2, 1]
        .into_iter()
        .find(|&g| g <= height && channels * g * g <= MAX_KEY_DIMS)
        .unwrap_or(1)
}

/// Keys of a batch of activations `[n, C, H, W]`: pooled to `grid` x `grid`, centred and scaled to
/// unit length, `[n, C·grid²]` (cosine similarity is then a dot product; centring makes it
/// insensitive to a uniform brightness shift of the features). On the CPU: one pooling op, the rest on a few hundred floats per row here (every request pays
/// for its key, and each small libtorch op costs more than the arithmetic).
pub fn keys(activations: &Tensor, grid: i64) -> Tensor {
    let pooled = activations
        .to_kind(Kind::Float)
        .adaptive_avg_pool2d([grid, grid])
        .flatten(1, -1)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let [n, d] = pooled.size()[..] else {
        unreachable!("flattened to two dimensions")
    };
    let mut v = vec![0f32; (n * d) as usize];
    let len = v.len();
    pooled.copy_data(&mut v, len);
    for row in v.chunks_mut(d.max(1) as usize) {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        row.iter_mut().for_each(|x| *x -= mean);
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Tensor::from_slice(&v).view([n, d])
}

#[derive(Debug, Clone)]
struct Entry {
    class: usize,
    confidence: f32,
    probs: Vec<f32>,
    last_used: u64,
}

/// A bounded store with least-recently-used eviction. Keys live in one preallocated `[capacity, d]`
/// tensor; live entries fill its first rows.
pub struct MemoryStore {
    keys: Tensor,
    /// Large stores: the index, trained once `IVF_TRAIN_KEYS` keys are stored (searched exactly
    /// until then).
    ivf: Option<Ivf>,
    wants_ivf: bool,
    entries: Vec<Option<Entry>>,
    /// (last use, slot) of every live entry, oldest first: eviction takes the first in O(log n)
    /// rather than scanning every slot under the store's lock.
    recency: BTreeSet<(u64, usize)>,
    /// Live entries; they fill slots from the front (entries leave only all at once, on clear).
    live: usize,
    tick: u64,
    dims: i64,
    classes: i64,
}

impl MemoryStore {
    /// A store of `capacity` entries, searched through the inverted-file index if `ivf`.
    pub fn new(capacity: usize, dims: i64, classes: i64, ivf: bool) -> Self {
        Self {
            keys: Tensor::zeros([capacity as i64, dims], (Kind::Float, tch::Device::Cpu)),
            ivf: None,
            wants_ivf: ivf,
            entries: vec![None; capacity],
            recency: BTreeSet::new(),
            live: 0,
            tick: 0,
            dims,
            classes,
        }
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes held: every slot's key and answer, and the index.
    pub fn bytes(&self) -> u64 {
        self.capacity() as u64 * entry_bytes(self.dims, self.classes) + self.ivf.as_ref().map_or(0, Ivf::bytes)
    }

    /// Whether lookups go through the inverted-file index now.
    pub fn indexed(&self) -> bool {
        self.ivf.is_some()
    }

    pub fn clear(&mut self) {
        let _ = self.keys.zero_();
        self.entries.iter_mut().for_each(|e| *e = None);
        self.recency.clear();
        self.live = 0;
        self.ivf = None;
    }

    /// Keys stored before the index is trained on them: enough for k-means to place √capacity
    /// centroids, few enough that training takes tens of milliseconds, once.
    fn ivf_train_keys(&self) -> usize {
        (32 * Ivf::shape(self.capacity()).0).min(self.capacity())
    }

    /// Slots and similarities of the `k` stored keys nearest to `q` `[d]` among `slots`, best first.
    fn nearest_among(&self, q: &Tensor, slots: &[i64], k: usize) -> Vec<(f32, usize)> {
        let k = k.min(slots.len());
        if k == 0 {
            return Vec::new();
        }
        let keys = self.keys.index_select(0, &Tensor::from_slice(slots));
        let (sims, idx) = keys.mv(&q.view([-1])).topk(k as i64, 0, true, true);
        let sims = Vec::<f32>::try_from(sims).expect("f32");
        let idx = Vec::<i64>::try_from(idx).expect("i64");
        sims.into_iter()
            .zip(idx)
            .map(|(v, i)| (v, slots[i as usize] as usize))
            .collect()
    }

    /// The `NEIGHBOURS` nearest stored entries to each row of `q` `[n, d]`, best first, with their
    /// slots.
    pub fn nearest(&self, q: &Tensor) -> Vec<Vec<(Neighbour, usize)>> {
        let rows = q.size()[0] as usize;
        if self.live == 0 {
            return vec![Vec::new(); rows];
        }
        let _g = tch::no_grad_guard();
        let found: Vec<Vec<(f32, usize)>> = match &self.ivf {
            Some(ivf) => (0..rows as i64)
                .map(|r| {
                    let qr = q.get(r);
                    self.nearest_among(&qr, &ivf.candidates(&qr), NEIGHBOURS)
                })
                .collect(),
            None => {
                let k = NEIGHBOURS.min(self.live);
                let (sims, idx) = q
                    .mm(&self.keys.narrow(0, 0, self.live as i64).tr())
                    .topk(k as i64, 1, true, true);
                let sims = Vec::<f32>::try_from(sims.flatten(0, -1)).expect("f32");
                let idx = Vec::<i64>::try_from(idx.flatten(0, -1)).expect("i64");
                (0..rows)
                    .map(|r| (0..k).map(|j| (sims[r * k + j], idx[r * k + j] as usize)).collect())
                    .collect()
            }
        };
        found
            .into_iter()
            .map(|near| {
                near.into_iter()
                    .filter_map(|(similarity, slot)| {
                        let e = self.entries[slot].as_ref()?;
                        let n = Neighbour {
                            similarity,
                            class: e.class,
                            confidence: e.confidence,
                        };
                        Some((n, slot))
                    })
                    .collect()
            })
            .collect()
    }

    /// Moves entry `slot`'s key to `key` `[d]` (its answer stays).
    fn set_key(&mut self, slot: usize, key: &Tensor) {
        self.keys.get(slot as i64).copy_(&key.view([-1]));
        if let Some(ivf) = self.ivf.as_mut() {
            ivf.file(slot, key);
        }
    }

    /// Marks an entry as used now.
    fn touch(&mut self, slot: usize) {
        if let Some(e) = self.entries[slot].as_mut() {
            self.recency.remove(&(e.last_used, slot));
            e.last_used = self.tick;
            self.recency.insert((e.last_used, slot));
        }
    }

    /// Stores `key` `[d]` with the base model's softmax row; evicts the least recently used entry
    /// when full. Returns whether an entry was evicted.
    pub fn insert(&mut self, key: &Tensor, probs: Vec<f32>) -> bool {
        if self.capacity() == 0 {
            return false;
        }
        let (class, confidence) = crate::outcomes::top1(&probs);
        self.tick += 1;
        let (slot, evicted) = if self.live < self.capacity() {
            self.live += 1;
            (self.live - 1, false)
        } else {
            let (_, oldest) = self.recency.pop_first().expect("a full store has live entries");
            (oldest, true)
        };
        self.set_key(slot, key);
        self.entries[slot] = Some(Entry {
            class,
            confidence,
            probs,
            last_used: self.tick,
        });
        self.recency.insert((self.tick, slot));
        if self.wants_ivf && self.ivf.is_none() && self.live == self.ivf_train_keys() {
            let stored = self.keys.narrow(0, 0, self.live as i64);
            let mut ivf = Ivf::train(&stored, self.capacity());
            for s in 0..self.live {
                ivf.file(s, &stored.get(s as i64));
            }
            self.ivf = Some(ivf);
        }
        evicted
    }

    fn probs(&self, slot: usize) -> Option<Vec<f32>> {
        self.entries[slot].as_ref().map(|e| e.probs.clone())
    }
}

/// A lock that a panic while it was held does not poison: the store and the audits stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Audited hits the guard keeps (most recent).
pub const AUDIT_WINDOW: usize = 400;

/// Audits among the current hits the guard needs before it acts.
const GUARD_MIN_AUDITS: usize = 30;

/// The confidence floors the guard raises `min_confidence` through, one step at a time; past the
/// last one the memory stops answering.
const GUARD_FLOORS: [f32; 6] = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999];

/// Recent lookups the gate judges the hit rate on.
pub const GATE_WINDOW: usize = 64;

/// While the gate is closed, one request in this many is still looked up, so that it sees the
/// traffic turn repetitive again.
pub const GATE_PROBE_EVERY: usize = 16;

/// Whether the store is searched for a request: on traffic without near-duplicates the search
/// would cost every request and answer none. Open while the last `GATE_WINDOW` lookups hit at
/// least `min_hit_rate` of the time (or there were fewer); closed, it lets one request in
/// `GATE_PROBE_EVERY` through, and a probe that hits opens it again at once.
#[derive(Debug, Default)]
struct Gate {
    /// Did each of the most recent lookups hit?
    recent: VecDeque<bool>,
    hits: usize,
    /// Requests skipped since the last probe.
    skipped: usize,
}

impl Gate {
    fn closed(&self, min_hit_rate: f64) -> bool {
        self.recent.len() >= GATE_WINDOW && (self.hits as f64) < min_hit_rate * self.recent.len() as f64
    }

    /// Whether `rows` requests are looked up now.
    fn admits(&mut self, rows: usize, min_hit_rate: f64) -> bool {
        if !self.closed(min_hit_rate) {
            return true;
        }
        self.skipped += rows;
        if self.skipped >= GATE_PROBE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    fn record(&mut self, hits: &[bool], min_hit_rate: f64) {
        if self.closed(min_hit_rate) && hits.contains(&true) {
            // A probe found a repeat: judge the traffic afresh, looking every request up.
            *self = Self::default();
        }
        for &hit in hits {
            self.recent.push_back(hit);
            self.hits += hit as usize;
            if self.recent.len() > GATE_WINDOW {
                self.hits -= self.recent.pop_front().unwrap_or(false) as usize;
            }
        }
    }
}

/// Counters a memory cache keeps (exported by the servers).
#[derive(Debug, Default)]
pub struct MemoryStats {
    pub lookups: AtomicU64,
    /// Requests the gate let skip the search (too few recent lookups hit to pay for it).
    pub skipped: AtomicU64,
    pub hits: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    /// Total lookup time, nanoseconds.
    pub lookup_ns: AtomicU64,
    /// Total time making keys (every request's, looked up or not), nanoseconds.
    pub key_ns: AtomicU64,
    /// Total time storing answers, nanoseconds.
    pub insert_ns: AtomicU64,
    /// Hits checked against the base model (the guard's evidence), and those it disagreed with.
    pub audits: AtomicU64,
    pub audit_disagreements: AtomicU64,
}

/// A memory cache in service: its spec, its store (shared by every replica of a worker) and counters.
pub struct MemoryCache {
    pub spec: MemorySpec,
    pub dims: i64,
    store: Mutex<MemoryStore>,
    pub stats: MemoryStats,
    /// The guard's confidence floor (f32 bits; 0 until it acts): hits need at least
    /// `max(spec.min_confidence, floor)`.
    floor: AtomicU32,
    /// The guard's evidence: (stored answer's confidence, the base model disagreed), most recent.
    audits: Mutex<VecDeque<(f32, bool)>>,
    gate: Mutex<Gate>,
}

impl MemoryCache {
    /// A memory cache for activations `[C, H, W]` at `spec.stage` of a model with `classes` classes.
    pub fn new(spec: MemorySpec, shape: [i64; 3], classes: i64) -> Result<Self> {
        let [c, h, _] = shape;
        if spec.grid < 1 || spec.grid > h {
            bail!(
                "memory cache at '{}': grid {} does not fit a {h}x{h} map",
                spec.layer,
                spec.grid
            );
        }
        let dims = c * spec.grid * spec.grid;
        let (capacity, ivf) = spec.capacity(dims, classes);
        if capacity == 0 {
            bail!(
                "memory cache at '{}': max_bytes {} holds no entry ({} bytes each)",
                spec.layer,
                spec.max_bytes,
                entry_bytes(dims, classes)
            );
        }
        Ok(Self {
            store: Mutex::new(MemoryStore::new(capacity, dims, classes, ivf)),
            spec,
            dims,
            stats: MemoryStats::default(),
            floor: AtomicU32::new(0f32.to_bits()),
            audits: Mutex::new(VecDeque::new()),
            gate: Mutex::new(Gate::default()),
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, MemoryStore> {
        lock(&self.store)
    }

    /// Keys of a batch of activations at this cache's layer, on the CPU where the store is.
    pub fn keys(&self, activations: &Tensor) -> Tensor {
        let t = Instant::now();
        let k = keys(activations, self.spec.grid);
        self.stats
            .key_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        k
    }

    /// For each key row: the stored softmax row and `(class, confidence)` on a hit, else None
    /// (also when the gate skips the search).
    pub fn answer_rows(&self, keys: &Tensor) -> Vec<Option<(Vec<f32>, usize, f32)>> {
        let rows = keys.size()[0] as usize;
        if self.spec.min_hit_rate > 0.0 && !lock(&self.gate).admits(rows, self.spec.min_hit_rate) {
            self.stats.skipped.fetch_add(rows as u64, Ordering::Relaxed);
            return (0..rows).map(|_| None).collect();
        }
        let t = Instant::now();
        let min_confidence = self.min_confidence();
        let mut store = self.store();
        store.tick += 1;
        let found = store.nearest(keys);
        let out: Vec<_> = found
            .into_iter()
            .enumerate()
            .map(|(i, near)| {
                let ns: Vec<Neighbour> = near.iter().map(|(n, _)| *n).collect();
                let class = decide(&ns, self.spec.min_similarity, min_confidence, self.spec.min_votes)?;
                let (n, slot) = near[0];
                store.touch(slot);
                if self.spec.follow_hits {
                    store.set_key(slot, &keys.get(i as i64));
                }
                Some((store.probs(slot)?, class, n.confidence))
            })
            .collect();
        drop(store);
        let hit: Vec<bool> = out.iter().map(Option::is_some).collect();
        if self.spec.min_hit_rate > 0.0 {
            lock(&self.gate).record(&hit, self.spec.min_hit_rate);
        }
        let hits = hit.iter().filter(|&&h| h).count() as u64;
        self.stats.lookups.fetch_add(rows as u64, Ordering::Relaxed);
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
        self.stats
            .lookup_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// The confidence a stored answer needs to be repeated: the plan's, or the guard's floor.
    pub fn min_confidence(&self) -> f32 {
        self.spec
            .min_confidence
            .max(f32::from_bits(self.floor.load(Ordering::Relaxed)))
    }

    /// The guard: records an audited hit (a hit whose request also ran the rest of the base model:
    /// the stored answer's confidence, and whether the base model answered otherwise). When the
    /// hits the memory still makes (stored confidence at least `min_confidence()`) disagree with
    /// the base model more often than `max_error` — the Wilson interval of their last audits lies
    /// wholly above it — the confidence floor rises one step (0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
    /// then no hits). Traffic the plan was not calibrated for (another camera, a model that is
    /// less stable on it) then costs speed, not the budget. Returns the new floor when it rose.
    pub fn audit(&self, confidence: f32, wrong: bool, max_error: f64) -> Option<f32> {
        self.stats.audits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .audit_disagreements
            .fetch_add(wrong as u64, Ordering::Relaxed);
        let mut audits = lock(&self.audits);
        audits.push_back((confidence, wrong));
        if audits.len() > AUDIT_WINDOW {
            audits.pop_front();
        }
        let floor = self.min_confidence();
        let (n, k) = audits
            .iter()
            .filter(|(c, _)| *c >= floor)
            .fold((0, 0), |(n, k), &(_, w)| (n + 1, k + w as usize));
        if n < GUARD_MIN_AUDITS || crate::online::wilson(k, n).0 <= max_error {
            return None;
        }
        let next = GUARD_FLOORS
            .into_iter()
            .find(|&f| f > floor)
            .unwrap_or(crate::decision::NEVER);
        self.floor.store(next.to_bits(), Ordering::Relaxed);
        Some(next)
    }

    /// Stores the base model's answer (softmax row) for a key.
    pub fn remember(&self, key: &Tensor, probs: Vec<f32>) {
        let t = Instant::now();
        let evicted = self.store().insert(key, probs);
        self.stats
            .insert_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        if evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.store().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.store().bytes()
    }

    pub fn capacity(&self) -> usize {
        self.store().capacity()
    }

    /// Whether lookups go through the inverted-file index now.
    pub fn indexed(&self) -> bool {
        self.store().indexed()
    }

    /// Forgets every entry and the guard's audits and floor (counters stay); how many entries
    /// there were.
    pub fn clear(&self) -> usize {
        let mut store = self.store();
        let n = store.len();
        store.clear();
        // The guard's evidence was about the stored answers: it starts again with them.
        lock(&self.audits).clear();
        *lock(&self.gate) = Gate::default();
        self.floor.store(0f32.to_bits(), Ordering::Relaxed);
        n
    }
}
