//! Test helpers: locate ../shared and convert the pretrained checkpoints once per test run.
#![allow(dead_code)]

use gati_core::{data, paths, BaseModel};
use std::path::{Path, PathBuf};

pub const CIFAR_MODELS: [&str; 4] = ["resnet20", "resnet32", "resnet44", "resnet56"];

pub fn shared() -> PathBuf {
    paths::shared_dir().expect("../shared (or $GATI_SHARED) with the CIFAR-10 data and weights is required")
}

pub fn cifar_jpeg() -> PathBuf {
    shared().join("datasets/cifar10-jpeg")
}

/// Safetensors weights for a pretrained CIFAR ResNet, converted once into the test target dir.
pub fn weights(model: &str) -> PathBuf {
    let ckpt = paths::checkpoint(model).expect("pretrained checkpoint");
    paths::convert_cached(model, &ckpt, &Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights"))
        .expect("checkpoint converts")
}

pub fn pretrained(model: &str) -> BaseModel {
    BaseModel::load(model, &weights(model), tch::Device::Cpu).expect("weights load")
}

/// The first `n` test JPEGs (class-balanced).
pub fn test_images(n: usize) -> data::Dataset {
    data::load_image_folder(&cifar_jpeg(), "test", Some(n), (32, 32)).expect("CIFAR-10 test JPEGs")
}

/// Python of the project virtualenv.
pub fn python() -> PathBuf {
    gati_core::weights::python()
}

pub fn scripts_py(name: &str) -> PathBuf {
    paths::project_root().join("scripts/py").join(name)
}

pub fn lfw() -> PathBuf {
    shared().join("datasets/lfw")
}

pub fn face_manifest() -> PathBuf {
    paths::checkpoint("face-resnet").expect("face-resnet TF.js weights in ../shared")
}

/// The face ResNet's TF.js weights, converted once into the test target dir.
pub fn face_resnet() -> BaseModel {
    let w = paths::convert_cached(
        "face-resnet",
        &face_manifest(),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights"),
    )
    .expect("TF.js weights convert");
    BaseModel::load("face-resnet", &w, tch::Device::Cpu).expect("face weights load")
}
