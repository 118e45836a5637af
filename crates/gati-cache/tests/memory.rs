//! Memory caches: near-duplicates answered and unrelated inputs not, bounded bytes with LRU
//! eviction, and a threshold calibrated on one stream that holds its budget on another.

use gati_cache::memory::{entry_bytes, keys, MemoryCache, MemoryIndex, MemorySpec, GATE_PROBE_EVERY, GATE_WINDOW};
use gati_cache::memory_plan::{best_within, score_all, LayerKeys, StreamSample};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

const SHAPE: [i64; 3] = [16, 8, 8];
const CLASSES: i64 = 10;

fn spec(max_bytes: u64) -> MemorySpec {
    MemorySpec {
        layer: "layer1.0".into(),
        stage: 1,
        grid: 4,
        min_similarity: 0.95,
        min_confidence: 0.9,
        min_votes: 1,
        max_bytes,
        remember_cache_hits: false,
        follow_hits: false,
        index: Default::default(),
        min_hit_rate: 0.0,
    }
}

/// Standard normal values from a seeded local generator: libtorch's global generator is
/// shared by the tests running beside this one, so a seed set there does not fix the values.
fn randn(rng: &mut StdRng, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u, w): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * w).cos()
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn act(seed: u64) -> Tensor {
    randn(&mut StdRng::seed_from_u64(seed), &[1, SHAPE[0], SHAPE[1], SHAPE[2]]).relu()
}

fn sure_of(class: usize, p: f32) -> Vec<f32> {
    let mut v = vec![(1.0 - p) / (CLASSES as f32 - 1.0); CLASSES as usize];
    v[class] = p;
    v
}

#[test]
fn a_near_duplicate_of_an_answered_input_hits_and_an_unrelated_one_does_not() {
    let cache = MemoryCache::new(spec(1 << 20), SHAPE, CLASSES).unwrap();
    let a = act(1);
    cache.remember(&cache.keys(&a).get(0), sure_of(3, 0.995));
    // The same input with a little noise and a brightness shift of its features.
    let near = &a * 1.05 + 0.02 + randn(&mut StdRng::seed_from_u64(7), &a.size()) * 0.02;
    let hits = cache.answer_rows(&cache.keys(&near));
    let (probs, class, conf) = hits[0].clone().expect("a near-duplicate is answered");
    assert_eq!((class, probs.len()), (3, CLASSES as usize));
    assert!((conf - 0.995).abs() < 1e-6);
    // Unrelated inputs miss, even with the store full of other answers.
    for s in 2..40 {
        cache.remember(&cache.keys(&act(s)).get(0), sure_of((s % 10) as usize, 0.999));
    }
    for s in 100..120 {
        assert!(cache.answer_rows(&cache.keys(&act(s)))[0].is_none(), "input {s} hit");
    }
    // A stored answer the base model was unsure of is not repeated.
    let b = act(200);
    cache.remember(&cache.keys(&b).get(0), sure_of(5, 0.6));
    assert!(cache.answer_rows(&cache.keys(&b))[0].is_none());
    assert!(cache.answer_rows(&cache.keys(&near))[0].is_some());
    let stats = &cache.stats;
    assert_eq!(stats.hits.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.lookups.load(std::sync::atomic::Ordering::Relaxed), 23);
}

/// Traffic without repeats: after a window of lookups that find nothing, only one request in
/// `GATE_PROBE_EVERY` is looked up (the rest still store their answers); when repeats come back,
/// the first probe finds one and every request is looked up again.
#[test]
fn a_memory_whose_lookups_stop_paying_probes_and_resumes_when_repeats_return() {
    let cache = MemoryCache::new(
        MemorySpec {
            min_hit_rate: 0.05,
            ..spec(1 << 20)
        },
        SHAPE,
        CLASSES,
    )
    .unwrap();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let ask = |s: u64| {
        let k = cache.keys(&act(s));
        let hit = cache.answer_rows(&k)[0].is_some();
        cache.remember(&k.get(0), sure_of((s % 10) as usize, 0.999));
        hit
    };
    let (window, every) = (GATE_WINDOW as u64, GATE_PROBE_EVERY);
    // A window of unrelated inputs: every one looked up, none hits.
    assert!((0..window).all(|s| !ask(s)));
    assert_eq!(count(&cache.stats.lookups), GATE_WINDOW);
    // Ten probes' worth more: only the probes are searched.
    assert!((window..window + 10 * every as u64).all(|s| !ask(s)));
    assert_eq!(count(&cache.stats.lookups), GATE_WINDOW + 10);
    assert_eq!(count(&cache.stats.skipped), 10 * (every - 1));
    // Repeats of inputs answered while the gate was closed (they were stored): the requests
    // before the next probe skip the search and miss; the probe hits, and from then on every
    // repeat is looked up and hits.
    let repeats: Vec<bool> = (window..window + 10 * every as u64).map(ask).collect();
    assert!(repeats[..every - 1].iter().all(|&h| !h), "{repeats:?}");
    assert!(repeats[every - 1..].iter().all(|&h| h), "{repeats:?}");
    // Without a floor, nothing is skipped.
    let plain = MemoryCache::new(spec(1 << 20), SHAPE, CLASSES).unwrap();
    for s in 0..3 * window {
        let _ = plain.answer_rows(&plain.keys(&act(s)));
    }
    assert_eq!(count(&plain.stats.lookups), 3 * GATE_WINDOW);
    assert_eq!(count(&plain.stats.skipped), 0);
}

#[test]
fn eviction_keeps_the_store_under_its_byte_limit_and_drops_the_least_recently_used() {
    let dims = SHAPE[0] * 16;
    let max_bytes = 20 * entry_bytes(dims, CLASSES) + 7;
    let cache = MemoryCache::new(spec(max_bytes), SHAPE, CLASSES).unwrap();
    assert_eq!(cache.capacity(), 20);
    let key = |s: u64| cache.keys(&act(s)).get(0);
    for s in 0..20 {
        cache.remember(&key(s), sure_of(1, 0.999));
    }
    // Use the first entry, so that the second is now the oldest.
    assert!(cache.answer_rows(&key(0).unsqueeze(0))[0].is_some());
    for s in 20..25 {
        cache.remember(&key(s), sure_of(2, 0.999));
        assert!(cache.bytes() <= max_bytes);
        assert_eq!(cache.len(), 20);
    }
    assert_eq!(cache.stats.evictions.load(std::sync::atomic::Ordering::Relaxed), 5);
    assert!(
        cache.answer_rows(&key(0).unsqueeze(0))[0].is_some(),
        "recently used entry evicted"
    );
    for s in 1..6 {
        assert!(
            cache.answer_rows(&key(s).unsqueeze(0))[0].is_none(),
            "entry {s} should be evicted"
        );
    }
    assert!(cache.answer_rows(&key(24).unsqueeze(0))[0].is_some());
    // A limit below one entry is refused, naming the layer.
    let e = MemoryCache::new(spec(10), SHAPE, CLASSES).err().unwrap().to_string();
    assert!(e.contains("layer1.0") && e.contains("max_bytes"), "{e}");
}

#[test]
fn a_large_store_searched_through_its_index_answers_as_exact_search_and_stays_under_its_limit() {
    let dims = SHAPE[0] * 16;
    let max_bytes = 3000 * entry_bytes(dims, CLASSES);
    let with = |index| {
        MemoryCache::new(
            MemorySpec {
                index,
                ..spec(max_bytes)
            },
            SHAPE,
            CLASSES,
        )
        .unwrap()
    };
    let (ivf, exact) = (with(MemoryIndex::Ivf), with(MemoryIndex::Exact));
    // The index's own bytes come out of the same limit.
    assert_eq!(exact.capacity(), 3000);
    assert!(ivf.capacity() < 3000 && ivf.capacity() > 2900, "{}", ivf.capacity());
    let key = |s: u64| ivf.keys(&act(s)).get(0);
    let near = |s: u64| {
        let a = act(s);
        ivf.keys(&(&a + randn(&mut StdRng::seed_from_u64(s + 1_000_000), &a.size()) * 0.03))
    };
    for s in 0..ivf.capacity() as u64 + 500 {
        let (k, p) = (key(s), sure_of((s % 10) as usize, 0.999));
        ivf.remember(&k, p.clone());
        exact.remember(&k, p);
        assert!(ivf.bytes() <= max_bytes, "{} > {max_bytes} after {s}", ivf.bytes());
    }
    assert!(ivf.indexed() && !exact.indexed());
    assert_eq!(ivf.len(), ivf.capacity());
    // Near-duplicates of stored inputs (the oldest 500 were evicted from the index's store).
    let (mut same, mut found) = (0, 0);
    let queries: Vec<u64> = (600..ivf.capacity() as u64).step_by(5).collect();
    for &s in &queries {
        let q = near(s);
        let (a, b) = (ivf.answer_rows(&q)[0].clone(), exact.answer_rows(&q)[0].clone());
        found += a.as_ref().is_some_and(|(_, c, _)| *c == (s % 10) as usize) as usize;
        same += (a.map(|x| x.1) == b.map(|x| x.1)) as usize;
    }
    let n = queries.len();
    assert!(found * 100 >= n * 99, "index found {found} of {n} near-duplicates");
    assert!(same * 100 >= n * 99, "index and exact search agree on {same} of {n}");
    // Unrelated inputs miss.
    for s in 900_000..900_050 {
        assert!(ivf.answer_rows(&ivf.keys(&act(s)))[0].is_none(), "input {s} hit");
    }
    // Clearing drops the index with the entries; refilled, it is trained again.
    assert_eq!(ivf.clear(), ivf.capacity());
    assert!(!ivf.indexed() && ivf.answer_rows(&near(700))[0].is_none());
    for s in 0..ivf.capacity() as u64 {
        ivf.remember(&key(s), sure_of((s % 10) as usize, 0.999));
    }
    assert!(ivf.indexed() && ivf.answer_rows(&near(700))[0].is_some());
}

/// A synthetic stream of items recurring as perturbed frames: an item's key is a fixed random
/// direction plus frame noise; its base answer is stable when the base is confident and flips
/// between two classes on a third of its frames when it is not.
fn stream(seed: u64, n: usize) -> (Vec<StreamSample>, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dims = 64;
    let mut samples = Vec::new();
    let mut rows = Vec::new();
    let mut open: Vec<(Tensor, usize, f32, usize, usize)> = Vec::new();
    let mut items = 0;
    while samples.len() < n {
        while open.len() < 4 {
            let dir = randn(&mut rng, &[dims]);
            let unsure = rng.gen_bool(0.3);
            let conf = if unsure {
                rng.gen_range(0.4..0.8)
            } else {
                rng.gen_range(0.97..1.0)
            };
            open.push((dir, rng.gen_range(0..10), conf, 6, items));
            items += 1;
        }
        let b = rng.gen_range(0..open.len());
        let (dir, class, conf, left, item) = &mut open[b];
        let flips = *conf < 0.9 && rng.gen_bool(0.33);
        let base_class = if flips { (*class + 1) % 10 } else { *class };
        let noise = randn(&mut rng, &[dims]) * 0.15;
        rows.push((&*dir + noise).unsqueeze(0));
        samples.push(StreamSample {
            base_class,
            base_confidence: *conf,
            label: Some(*class as i64),
            learned_class: base_class,
            learned_stage: None,
            learned_confidence: 0.0,
            learned_ms: 10.0,
            item: *item,
        });
        *left -= 1;
        if *left == 0 {
            let _ = open.swap_remove(b);
        }
    }
    let k = Tensor::cat(&rows, 0);
    let k = &k - k.mean_dim(1, true, Kind::Float);
    let k = &k / k.norm_scalaropt_dim(2.0, [1], true);
    (samples, k)
}

fn layer(keys: Tensor) -> LayerKeys {
    LayerKeys {
        layer: "layer1.0".into(),
        stage: 1,
        grid: 4,
        keys,
        hit_ms: 1.0,
        lookup_ms: 0.05,
    }
}

#[test]
fn a_threshold_calibrated_on_one_stream_holds_the_budget_on_another() {
    let budget = 0.02;
    let (cal, cal_keys) = stream(1, 1500);
    let scored = score_all(&cal, &[layer(cal_keys)], |_| 4096, 10.0);
    let best = best_within(&scored, budget, 1.0).clone();
    assert_eq!(best.layer, "layer1.0");
    // Most repeats of confident items are answered from memory...
    assert!(best.memory_hit_rate > 0.5, "{best:?}");
    assert!(best.speedup > 2.0, "{best:?}");
    // ...but not the unstable items: answering every repeat would break the budget.
    let all = scored
        .iter()
        .find(|s| s.learned && s.min_confidence == 0.0 && s.min_similarity == 0.8)
        .unwrap();
    assert!(all.fidelity_loss > 2.0 * budget, "{all:?}");
    // Held out: another stream, replayed with the chosen setting.
    let (held, held_keys) = stream(2, 1500);
    let again = score_all(&held, &[layer(held_keys)], |_| 4096, 10.0);
    let same = again
        .iter()
        .find(|s| {
            s.learned == best.learned
                && s.min_similarity == best.min_similarity
                && s.min_confidence == best.min_confidence
        })
        .unwrap();
    assert!(same.fidelity_loss <= budget, "{same:?}");
    assert!(same.memory_hit_rate > 0.5, "{same:?}");
}

#[test]
fn keys_are_unit_length_and_ignore_a_uniform_shift() {
    let a = act(3);
    let k = keys(&a, 4);
    assert_eq!(k.size(), [1, 16 * 16]);
    let norm = k.norm().double_value(&[]);
    assert!((norm - 1.0).abs() < 1e-5);
    let shifted = keys(&(&a + 0.5), 4);
    let sim = (&k * &shifted).sum(Kind::Float).double_value(&[]);
    assert!(sim > 0.9999, "{sim}");
}

#[test]
fn the_guard_raises_the_confidence_floor_only_when_audited_hits_disagree_beyond_the_budget() {
    let m = MemoryCache::new(spec(1 << 20), SHAPE, CLASSES).unwrap();
    let (a, b) = (act(1), act(2));
    m.remember(&m.keys(&a).get(0), sure_of(3, 0.93));
    m.remember(&m.keys(&b).get(0), sure_of(4, 0.999));
    assert!(m.answer_rows(&m.keys(&a))[0].is_some(), "0.93 is above the plan's 0.9");
    // Audits that agree with the base model (1 in 100 wrong, budget 5%): the floor stays.
    for i in 0..300 {
        assert_eq!(m.audit(0.93, i % 100 == 0, 0.05), None, "audit {i}");
    }
    assert_eq!(m.min_confidence(), 0.9);
    // The base model now disagrees with a third of the hits: the floor rises past 0.93 at once,
    // and the sure stored answer still answers.
    let mut rose = Vec::new();
    for i in 0..200 {
        rose.extend(m.audit(0.93, i % 3 == 0, 0.05));
    }
    assert!(!rose.is_empty() && m.min_confidence() > 0.93, "{rose:?}");
    assert!(
        m.answer_rows(&m.keys(&a))[0].is_none(),
        "the unsure answer is no longer repeated"
    );
    assert!(m.answer_rows(&m.keys(&b))[0].is_some(), "the sure one still is");
    let floor = m.min_confidence();
    // Audits of hits below the floor are no longer hits: they cannot raise it further.
    for _ in 0..200 {
        assert_eq!(m.audit(0.93, true, 0.05), None);
    }
    assert_eq!(m.min_confidence(), floor);
    assert_eq!(m.stats.audits.load(std::sync::atomic::Ordering::Relaxed), 700);
}
