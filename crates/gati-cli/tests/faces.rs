//! The face workload end to end on a small LFW subset: a face-lfw62 plan (caches distilled on
//! training faces), `gati evaluate`, and clusters in inline and distributed mode that answer the
//! evaluation faces as in-process early exit does.

use gati_cache::runtime::{EarlyExit, Exit};
use gati_rpc::{AnswerSource, TGatiSyncClient};
use gati_server::client::image_request;
use std::path::PathBuf;
use std::sync::OnceLock;

mod common;

use common::{gati, Cluster};

const MODEL: &str = "face-lfw62";
const TEST_LIMIT: usize = 248;

fn lfw() -> PathBuf {
    gati_core::paths::lfw_dir().unwrap()
}

/// Caches at two late blocks, trained on 372 training faces (6 per person) for 6 epochs in
/// batches of 16 (62 classes need more steps than 10 do); a 5% budget so that they answer often.
fn face_plan() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        gati_core::set_threads(2);
        let dir = tempfile::tempdir().unwrap().keep();
        let manifest = gati_core::paths::checkpoint(MODEL).unwrap();
        let w = gati_core::paths::convert_cached(MODEL, &manifest, &dir.join("weights")).unwrap();
        let model = gati_core::BaseModel::load(MODEL, &w, tch::Device::Cpu).unwrap();
        let train = gati_core::data::load(&lfw(), "train", Some(372), (150, 150)).unwrap();
        let test = gati_core::data::load(&lfw(), "test", Some(TEST_LIMIT), (150, 150)).unwrap();
        let config = gati_cache::train::TrainConfig {
            epochs: 6,
            batch_size: 16,
            train_limit: Some(372),
            ..Default::default()
        };
        let stages = ["conv128_2", "conv256_1"];
        let (out, p) = common::plan_fixed_costs(&dir, &model, &w, &train, &test, &stages, &config, 1.0);
        assert!(!p.caches.is_empty(), "the face plan needs a cache: {:?}", p.expected);
        out
    })
}

/// The evaluation faces as the wire carries them (150x150 PNGs) and as the model sees them.
fn evaluation_faces(ee: &EarlyExit) -> Vec<(Vec<u8>, tch::Tensor)> {
    let test = gati_core::data::load(&lfw(), "test", Some(TEST_LIMIT), (150, 150)).unwrap();
    let (_, ei) = gati_cache::split::calibration_evaluation(&test.labels);
    ei.iter()
        .take(60)
        .map(|&i| {
            let px = test.images.narrow(0, i as i64, 1);
            (gati_bench::inputs::encode_png(&px).unwrap(), ee.model.preprocess(&px))
        })
        .collect()
}

#[test]
fn a_face_plan_evaluates_and_served_clusters_answer_as_in_process() {
    let plan = face_plan();
    let out = gati()
        .args(["evaluate", "--json", "--plan"])
        .arg(plan)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report;
    assert!(r["hit_rate"].as_f64().unwrap() > 0.1, "{report}");
    // The base model identifies faces it never trained on: far above chance (1/62).
    assert!(r["base_top1"].as_f64().unwrap() > 70.0, "{report}");

    let ee = EarlyExit::load(plan).unwrap().1;
    let faces = evaluation_faces(&ee);
    for mode in ["inline", "distributed"] {
        let c = Cluster::up_plan(plan, mode, &[]);
        let mut client = c.client();
        let mut hits = 0;
        for (png, x) in &faces {
            let served = client.infer(image_request(MODEL, png.clone())).unwrap();
            let local = ee.infer(x);
            let base = gati_core::eval::argmax(&tch::no_grad(|| ee.model.forward(x)))[0];
            if served.source == AnswerSource::CACHE {
                hits += 1;
            }
            match (mode, local.exit) {
                // Inline runs the same loop: the same answer from the same place.
                ("inline", Exit::Cache(i)) => {
                    assert_eq!(served.class_index as usize, local.class);
                    assert_eq!(served.cache_layer.as_deref(), Some(ee.caches[i].layer.as_str()));
                }
                ("inline", Exit::Base) => {
                    assert_eq!((served.class_index as i64, served.source), (base, AnswerSource::BASE))
                }
                // Distributed: the first confident cache worker or the base model's answer.
                (_, _) if served.source == AnswerSource::CACHE => {
                    let layer = served.cache_layer.clone().unwrap();
                    assert!(ee.caches.iter().any(|c| c.layer == layer), "{layer}");
                }
                (_, _) => assert_eq!(served.class_index as i64, base),
            }
        }
        assert!(hits > 0, "{mode}: no face was answered by a cache");
        let info = client.models().unwrap().remove(0);
        assert_eq!(info.input_shape, vec![3, 150, 150]);
        assert_eq!(info.classes.len(), 62);
        assert_eq!(info.classes[0], "Alejandro_Toledo");
    }
}

#[test]
fn eval_reports_lfw_verification_for_the_embedding_model() {
    let out = gati()
        .args([
            "eval",
            "--model",
            "face-resnet",
            "--limit",
            "10",
            "--latency-samples",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verification"]["pairs"], 200);
    assert!(r["verification"]["mean"].as_f64().unwrap() > 75.0, "{r}");
    assert_eq!(r["stages"].as_array().unwrap().len(), 16);
}
