//! The planner against exhaustive search, and its budget and memory constraints.

use gati_cache::planner::{HeadOption, Mode, Outcome, Problem};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A toy instance shaped like the real one: deeper caches hit more often, looser settings hit more
/// but disagree more; each sample has a difficulty shared by all caches.
fn toy(seed: u64, stages: usize, variants: usize, settings: usize, n: usize, mode: Mode) -> Problem {
    let mut rng = StdRng::seed_from_u64(seed);
    let difficulty: Vec<f64> = (0..n).map(|_| rng.gen()).collect();
    let stage_ms: Vec<f64> = (0..stages + 2).map(|_| rng.gen_range(0.15..0.25)).collect();
    let mut options = Vec::new();
    for s in 1..=stages {
        for v in 0..variants {
            let quality = (s as f64 / (stages as f64 + 1.0)) * rng.gen_range(0.6..1.0);
            let cost_ms = rng.gen_range(0.01..0.12);
            let settings = (0..settings)
                .map(|j| {
                    let loose = 0.5 + 0.5 * j as f64 / settings as f64;
                    difficulty
                        .iter()
                        .map(|&d| {
                            if d > quality * loose {
                                Outcome::Miss
                            } else if rng.gen::<f64>() < 0.02 * j as f64 * d {
                                Outcome::Disagree
                            } else {
                                Outcome::Agree
                            }
                        })
                        .collect()
                })
                .collect();
            options.push(HeadOption {
                stage: s,
                cost_ms,
                bytes: rng.gen_range(1000..100_000),
                // Inline mode: the first stage's second variant runs beside the base model.
                beside: s == 1 && v == 1,
                settings,
            });
        }
    }
    Problem {
        samples: n,
        stage_ms,
        options,
        mode,
        send_ms: 0.02,
        transfer_ms: 0.1,
        beside_slowdown_ms: 0.01,
        budget: 0.01,
        margin_sigmas: 0.0,
        memory_budget_bytes: None,
    }
}

#[test]
fn greedy_search_matches_exhaustive_search_on_toy_instances() {
    let mut matched = 0;
    let total = 24;
    for seed in 0..total {
        let mode = if seed % 2 == 0 { Mode::Inline } else { Mode::Distributed };
        let p = toy(seed, 4, 2, 3, 400, mode);
        let (g, x) = (p.evaluate(&p.solve()), p.evaluate(&p.exhaustive()));
        assert!(g.fidelity_loss <= p.budget + 1e-12, "seed {seed}: greedy over budget");
        assert!(x.fidelity_loss <= p.budget + 1e-12);
        assert!(
            g.mean_latency_ms >= x.mean_latency_ms - 1e-9,
            "exhaustive is the optimum"
        );
        // Never far off, and usually exactly the optimum.
        assert!(
            g.mean_latency_ms <= x.mean_latency_ms * 1.02,
            "seed {seed}: {g:?} vs optimum {x:?}"
        );
        matched += (g.mean_latency_ms <= x.mean_latency_ms + 1e-9) as u64;
    }
    eprintln!("greedy optimum on {matched}/{total}");
    assert!(
        matched * 10 >= total * 9,
        "greedy found the optimum on {matched}/{total} instances"
    );
}

#[test]
fn plans_respect_budget_and_memory_and_beat_the_base() {
    let mut p = toy(7, 10, 3, 20, 2000, Mode::Inline);
    let e = p.evaluate(&p.solve());
    assert!(e.fidelity_loss <= p.budget);
    assert!(e.mean_latency_ms < e.base_latency_ms, "{e:?}");
    assert!(e.hit_rates.iter().sum::<f64>() > 0.2);
    // A tighter budget can only cost latency; a zero budget admits no disagreement at all.
    p.budget = 0.0;
    let z = p.evaluate(&p.solve());
    assert_eq!(z.wrong, 0);
    assert!(z.mean_latency_ms >= e.mean_latency_ms - 1e-9);
    // A safety margin spends less of the budget: w + √w ≤ 20 allows 16 of 2,000 samples to differ.
    p.margin_sigmas = 1.0;
    let m = p.evaluate(&p.solve());
    assert!(m.wrong <= 16, "{m:?}");
    assert!(m.mean_latency_ms >= e.mean_latency_ms - 1e-9);
    p.margin_sigmas = 0.0;
    // A memory budget smaller than any cache leaves the base model alone.
    p.budget = 0.01;
    p.memory_budget_bytes = Some(500);
    assert!(p.solve().is_empty());
}

#[test]
fn evaluation_counts_exits_in_stage_order() {
    // Two caches; sample 0 hits at both (answers at the first), sample 1 only at the second.
    let opt = |stage, hits: Vec<Outcome>| HeadOption {
        stage,
        cost_ms: 0.1,
        bytes: 1,
        beside: false,
        settings: vec![hits],
    };
    let p = Problem {
        samples: 3,
        stage_ms: vec![1.0, 1.0, 1.0, 1.0],
        options: vec![
            opt(2, vec![Outcome::Agree, Outcome::Miss, Outcome::Miss]),
            opt(1, vec![Outcome::Disagree, Outcome::Agree, Outcome::Miss]),
        ],
        mode: Mode::Inline,
        send_ms: 0.0,
        transfer_ms: 0.0,
        beside_slowdown_ms: 0.0,
        budget: 1.0,
        margin_sigmas: 0.0,
        memory_budget_bytes: None,
    };
    use gati_cache::planner::Choice;
    let e = p.evaluate(&[Choice { option: 0, setting: 0 }, Choice { option: 1, setting: 0 }]);
    // Stage order: option 1 (stage 1) first. Sample 0 exits there (wrong), sample 1 too, sample 2 runs all.
    assert_eq!(e.hit_rates, vec![2.0 / 3.0, 0.0]);
    assert_eq!(e.wrong, 1);
    // Latencies: 2 + 0.1, 2 + 0.1, 4 + 0.2.
    assert!((e.mean_latency_ms - (2.1 + 2.1 + 4.2) / 3.0).abs() < 1e-12);
    assert_eq!(e.base_latency_ms, 4.0);
}

/// A cache beside the base model answers after its latency there, and costs the requests it
/// misses only the base model's slowdown; inline, they pay its whole time.
#[test]
fn a_cache_beside_the_base_costs_its_misses_only_the_slowdown() {
    use gati_cache::planner::Choice;
    let p = |beside, cost_ms| Problem {
        samples: 2,
        stage_ms: vec![0.5, 1.0, 1.0, 1.0, 1.0],
        options: vec![HeadOption {
            stage: 0,
            cost_ms,
            bytes: 1,
            beside,
            settings: vec![vec![Outcome::Agree, Outcome::Miss]],
        }],
        mode: Mode::Inline,
        send_ms: 0.0,
        transfer_ms: 0.0,
        beside_slowdown_ms: 0.2,
        budget: 0.0,
        margin_sigmas: 0.0,
        memory_budget_bytes: None,
    };
    let only = [Choice { option: 0, setting: 0 }];
    // Beside: the hit answers at 0.5 + 2.1, the miss at the base's 4.5 + 0.2.
    assert!((p(true, 2.1).evaluate(&only).mean_latency_ms - (2.6 + 4.7) / 2.0).abs() < 1e-12);
    // Inline: 0.5 + 1.5 and 4.5 + 1.5.
    assert!((p(false, 1.5).evaluate(&only).mean_latency_ms - (2.0 + 6.0) / 2.0).abs() < 1e-12);
    assert_eq!(p(true, 2.1).solve(), only.to_vec());
}

/// Size check for the real instance (27 layers × 5 variants × 20 settings × 5,000 samples); its
/// time is reported by `gati plan` (`planning_seconds`) and recorded in docs/results.md.
#[test]
fn resnet56_sized_instance_plans_within_budget() {
    let p = toy(3, 27, 5, 20, 5000, Mode::Inline);
    let t = std::time::Instant::now();
    let plan = p.solve();
    eprintln!(
        "planned 27x5x20 over 5000 samples in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let e = p.evaluate(&plan);
    assert!(e.fidelity_loss <= p.budget && e.mean_latency_ms < e.base_latency_ms);
}
