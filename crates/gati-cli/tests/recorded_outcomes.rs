//! The early-exit loop answers as it did when these outcomes were recorded: the same class, exit
//! layer and confidence for each of 300 CIFAR-10 test images, with a fixed plan (ResNet-20 with
//! the test plan's caches, committed beside the outcomes). Batched runs give each sample the
//! answer it gets alone.
//!
//! Re-record (only after a deliberate change of behaviour):
//! `GATI_RECORD_OUTCOMES=1 cargo test -p gati-cli --test recorded_outcomes`

use gati_cache::plan::Plan;
use gati_cache::runtime::{Answer, EarlyExit, Exit};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod common;

const IMAGES: usize = 300;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Outcome {
    image: String,
    class: usize,
    /// The layer whose cache answered; "base" when none did.
    exit: String,
    confidence: f32,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/outcomes")
}

/// The committed plan with the base weights converted on this machine.
fn fixed_plan() -> EarlyExit {
    let dir = fixture();
    let mut plan = Plan::load(&dir).unwrap();
    let ckpt = gati_core::paths::checkpoint(&plan.model).unwrap();
    plan.weights = gati_core::paths::convert_cached(
        &plan.model,
        &ckpt,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weights"),
    )
    .unwrap();
    let model = gati_core::BaseModel::load(&plan.model, &plan.weights, tch::Device::Cpu).unwrap();
    EarlyExit::from_plan(&plan, model, &plan.caches_path(&dir)).unwrap()
}

fn images() -> gati_core::data::Dataset {
    let cifar = gati_core::paths::cifar10_dir().unwrap();
    // The last images of the test split: the test plan calibrated on the first 1,000.
    let all = gati_core::data::load(&cifar, "test", None, (32, 32)).unwrap();
    let n = all.len();
    all.subset(&(n - IMAGES..n).collect::<Vec<_>>())
}

fn outcome(ee: &EarlyExit, image: &str, a: &Answer) -> Outcome {
    Outcome {
        image: {
            let p = std::path::Path::new(image);
            let class = p.parent().and_then(|d| d.file_name()).unwrap_or_default();
            format!(
                "{}/{}",
                class.to_string_lossy(),
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        },
        class: a.class,
        exit: match a.exit {
            Exit::Cache(c) => ee.caches[c].layer.clone(),
            Exit::Base => "base".into(),
            Exit::Memory => "memory".into(),
        },
        confidence: a.confidence,
    }
}

fn record() {
    let dir = fixture();
    std::fs::create_dir_all(&dir).unwrap();
    let plan = Plan::load(common::plan_dir()).unwrap();
    let caches = plan.caches_path(common::plan_dir());
    std::fs::copy(&caches, dir.join(caches.file_name().unwrap())).unwrap();
    let mut fixed = plan.clone();
    fixed.weights = PathBuf::from("(converted from the shipped resnet20 checkpoint)");
    fixed.candidates = None;
    std::fs::write(dir.join("plan.json"), serde_json::to_string_pretty(&fixed).unwrap()).unwrap();
}

#[test]
fn the_early_exit_loop_answers_as_recorded() {
    gati_core::set_threads(1);
    let recording = std::env::var_os("GATI_RECORD_OUTCOMES").is_some();
    if recording {
        record();
    }
    let ee = fixed_plan();
    let data = images();
    let x = ee.model.preprocess(&data.images);
    let got: Vec<Outcome> = (0..data.len())
        .map(|i| outcome(&ee, &data.sources[i], &ee.infer(&x.narrow(0, i as i64, 1))))
        .collect();
    let path = fixture().join("outcomes.json");
    if recording {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap()).unwrap();
        eprintln!("recorded {} outcomes in {}", got.len(), path.display());
    }
    let want: Vec<Outcome> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(want.len(), IMAGES);
    let hits = want.iter().filter(|o| o.exit != "base").count();
    assert!(
        hits > 30 && hits < IMAGES,
        "the fixture should mix hits and misses: {hits}"
    );
    same(&want, &got, "one at a time");

    // Batches of 16 (and a last, shorter one): samples leave at their own exits.
    let mut batched = Vec::new();
    for start in (0..data.len()).step_by(16) {
        let n = 16.min(data.len() - start);
        let answers = ee.infer_batch(&x.narrow(0, start as i64, n as i64));
        assert_eq!(answers.len(), n);
        for (i, a) in answers.iter().enumerate() {
            batched.push(outcome(&ee, &data.sources[start + i], a));
        }
    }
    same(&want, &batched, "in batches of 16");
}

fn same(want: &[Outcome], got: &[Outcome], how: &str) {
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(got) {
        assert_eq!((&w.image, w.class, &w.exit), (&g.image, g.class, &g.exit), "{how}");
        assert!((w.confidence - g.confidence).abs() < 1e-4, "{how}: {w:?} vs {g:?}");
    }
}
