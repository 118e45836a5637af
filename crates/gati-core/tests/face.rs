//! The face ResNet: TF.js import checks, parity with an independent PyTorch port on real LFW
//! images, and the LFW verification protocol on a small subset.

mod common;

use gati_core::data::{self, lfw};
use gati_core::{tfjs, verify};
use std::path::Path;
use std::process::Command;
use tch::Tensor;

/// A copy of the TF.js model in `dir` whose manifest and .bin are edited by `edit`.
fn edited_copy(dir: &Path, edit: impl Fn(&mut serde_json::Value, &mut Vec<u8>)) -> std::path::PathBuf {
    let src = common::face_manifest();
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    let bin_name = manifest[0]["paths"][0].as_str().unwrap().to_string();
    let mut bin = std::fs::read(src.parent().unwrap().join(&bin_name)).unwrap();
    edit(&mut manifest, &mut bin);
    std::fs::write(dir.join(&bin_name), bin).unwrap();
    let out = dir.join("model-weights_manifest.json");
    std::fs::write(&out, manifest.to_string()).unwrap();
    out
}

#[test]
fn tfjs_import_refuses_a_truncated_bin_and_shapes_that_disagree_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");

    let truncated = edited_copy(dir.path(), |_, bin| bin.truncate(bin.len() - 1000));
    let e = tfjs::import("face-resnet", &truncated, &out).unwrap_err().to_string();
    assert!(
        e.contains("face_recognition_model.bin is truncated: tensor fc needs"),
        "{e}"
    );

    // Same number of values, transposed shape: only the model check can catch it.
    let transposed = edited_copy(dir.path(), |m, _| {
        let fc = m[0]["weights"].as_array_mut().unwrap().last_mut().unwrap();
        assert_eq!(fc["name"], "fc");
        fc["shape"] = serde_json::json!([128, 256]);
    });
    let e = tfjs::import("face-resnet", &transposed, &out).unwrap_err().to_string();
    assert!(
        e.contains("mis-shaped keys [fc (file [128, 256], model [256, 128])]"),
        "{e}"
    );
    assert!(!out.exists());

    let n = tfjs::import("face-resnet", &common::face_manifest(), &out).unwrap();
    assert_eq!(n, 117);
}

/// Embeddings of normalised inputs under the PyTorch port: (batch 1, batched).
fn pytorch_embeddings(x: &Tensor, dir: &Path) -> (Tensor, Tensor) {
    let inputs = dir.join("x.safetensors");
    let out = dir.join("emb.safetensors");
    Tensor::write_safetensors(&[("x", x)], &inputs).unwrap();
    let status = Command::new(common::python())
        .arg(common::scripts_py("face_resnet.py"))
        .args([
            "embed".as_ref(),
            common::face_manifest().as_os_str(),
            inputs.as_os_str(),
            out.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "PyTorch face port failed");
    let mut t: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    (t.remove("embeddings").unwrap(), t.remove("embeddings_batched").unwrap())
}

fn max_relative(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
fn embeddings_match_the_pytorch_port_on_real_lfw_images_batch_1_and_batched() {
    let m = common::face_resnet();
    let ds = data::load(&common::lfw(), "test", Some(8), (150, 150)).unwrap();
    assert_eq!(ds.images.size(), [8, 3, 150, 150]);
    let x = m.preprocess(&ds.images);
    let ours_batched = tch::no_grad(|| m.forward(&x));
    let ours_one = tch::no_grad(|| Tensor::cat(&(0..8).map(|i| m.forward(&x.narrow(0, i, 1))).collect::<Vec<_>>(), 0));
    let dir = tempfile::tempdir().unwrap();
    let (theirs_one, theirs_batched) = pytorch_embeddings(&x, dir.path());
    for (name, ours, theirs) in [
        ("batch 1", &ours_one, &theirs_one),
        ("batched", &ours_batched, &theirs_batched),
    ] {
        let rel = max_relative(ours, theirs);
        assert!(rel <= 1e-4, "{name}: max relative embedding difference {rel}");
    }
    // Real faces: different people's embeddings differ.
    assert!(max_relative(&ours_one.narrow(0, 0, 1), &ours_one.narrow(0, 1, 1)) > 0.05);
}

#[test]
fn verification_on_a_small_subset_is_far_above_chance() {
    let m = common::face_resnet();
    // 15 matched + 15 mismatched pairs from each of the 10 folds.
    let (v, _) = verify::lfw_verification(&m, &common::lfw(), Some(15), 64).unwrap();
    assert_eq!((v.pairs, v.folds), (300, 10));
    assert!(v.mean > 80.0, "verification accuracy {}% (chance is 50%)", v.mean);
    assert!(v.mean_distance_same < v.mean_distance_different);
}

#[test]
fn identification_splits_are_disjoint_and_cover_the_62_people() {
    let root = common::lfw();
    let people = lfw::people(&root).unwrap();
    let ids: Vec<_> = people.iter().filter(|(_, f)| f.len() >= lfw::MIN_IMAGES).collect();
    assert_eq!(ids.len(), 62);
    assert_eq!(ids.iter().map(|(_, f)| f.len()).sum::<usize>(), 3023);
    let pairs = lfw::pairs(&root).unwrap();
    assert_eq!(pairs.len(), 6000);
    assert!(pairs.iter().all(|p| p.a.is_file() && p.b.is_file()));
    // Small images keep the test quick; the split logic does not depend on size.
    let train = data::load(&root, "train", Some(124), (16, 16)).unwrap();
    let test = data::load(&root, "test", Some(124), (16, 16)).unwrap();
    assert_eq!(train.classes.len(), 62);
    for l in 0..62 {
        assert_eq!(train.labels.iter().filter(|&&x| x == l).count(), 2);
    }
    assert!(train.sources.iter().all(|s| !test.sources.contains(s)));
}
