//! The committed fine-tuned bases (`models/resnetNN-jpeg[-exits]/`, scripts/finetune-bases.sh) load by
//! model name and score on the test JPEGs what their provenance records, clearly above the
//! as-shipped checkpoints.

mod common;

use gati_core::{eval, paths, BaseModel};

/// The fine-tuned models whose weights are committed.
fn committed() -> Vec<&'static str> {
    gati_core::models::MODEL_NAMES
        .iter()
        .copied()
        .filter(|m| paths::fine_tuned_weights(m).is_some_and(|w| w.is_file()))
        .collect()
}

#[test]
fn fine_tuned_bases_match_their_recorded_accuracy() {
    let models = committed();
    for m in ["resnet56-jpeg", "resnet56-jpeg-exits"] {
        assert!(models.contains(&m), "models/{m} is committed");
    }
    let images = common::test_images(2000);
    for name in models {
        let dir = paths::project_root().join("models").join(name);
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("finetune.json")).unwrap()).unwrap();
        if let Some(teacher) = record["student_of"].as_str() {
            // A student's blocks read its teacher's stem through its adapter, not its own stem:
            // gati-cache's `a_student_starts_from_the_smaller_base` checks it there.
            assert!(
                paths::student_adapter(name, teacher).is_some(),
                "{name}: its adapter is committed"
            );
            continue;
        }
        let want = 100.0 * record["top1_test_first_2000"].as_f64().expect("recorded sample top-1");
        let weights = paths::resolve_weights(name, None).unwrap();
        let model = BaseModel::load(name, &weights, tch::Device::Cpu).unwrap();
        let got = eval::top1(&eval::predict(&model, &images, 250), &images.labels);
        let shipped = name.split("-jpeg").next().expect("a name");
        let before = eval::top1(
            &eval::predict(&common::pretrained(shipped), &images, 250),
            &images.labels,
        );
        eprintln!("{name}: top-1 {got:.2}% (PyTorch recorded {want:.2}%), as shipped {before:.2}%");
        // Same decoded pixels (gati export-data) in PyTorch: at most a couple of near-ties differ.
        assert!((got - want).abs() <= 0.15, "{name}: {got:.2}% vs recorded {want:.2}%");
        assert!(got > before + 3.0, "{name}: {got:.2}% vs as shipped {before:.2}%");
    }
}
