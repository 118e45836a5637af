//! `gati fit-classifier`: the identification layer of `face-lfw62`, fitted on the face ResNet's
//! embeddings of LFW's training split (62 people with at least 20 images).

use anyhow::{bail, Result};
use gati_core::models::Task;
use gati_core::{classifier, eval, paths, weights, BaseModel};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The embedding model (weights: --weights, default its TF.js weights in ../shared)
    #[arg(long, default_value = "face-resnet")]
    model: String,
    #[arg(long, env = "GATI_WEIGHTS")]
    weights: Option<PathBuf>,
    /// LFW folder (default: ../shared/datasets/lfw)
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output safetensors (`classifier.weight`, `classifier.bias`)
    #[arg(long, default_value_os_t = paths::face_classifier())]
    out: PathBuf,
    /// Full-batch Adam steps (2,000: training top-1 still rises at 500)
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// libtorch threads (0 = all cores)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    weights: PathBuf,
    weights_sha256: String,
    data: PathBuf,
    out: PathBuf,
    classes: usize,
    train_images: usize,
    test_images: usize,
    train_top1: f64,
    /// Top-1 on the test split (both halves `gati plan` later cuts it into).
    test_top1: f64,
    steps: usize,
    lr: f64,
    weight_decay: f64,
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    gati_core::set_threads(a.threads);
    let weights = paths::resolve_weights(&a.model, a.weights.as_deref())?;
    let model = BaseModel::load(&a.model, &weights, tch::Device::Cpu)?;
    if model.spec().task != Task::Embedding {
        bail!(
            "--model {}: fit-classifier needs an embedding model (face-resnet)",
            a.model
        );
    }
    let data = paths::data_dir_for(&a.model, a.data.as_deref())?;
    let train = super::data_args::load_split(&model, &data, "train", None)?;
    let test = super::data_args::load_split(&model, &data, "test", None)?;
    let names = BaseModel::new("face-lfw62", tch::Device::Cpu)?.spec().class_names();
    if train.classes != names {
        bail!(
            "{}: its identification classes are not face-lfw62's 62 people (found {} classes)",
            data.display(),
            train.classes.len()
        );
    }
    let (ftrain, ftest) = (eval::predict(&model, &train, 64), eval::predict(&model, &test, 64));
    let classes = train.classes.len() as i64;
    let fit = classifier::fit_linear(&ftrain, &train.labels, classes, a.steps, a.lr, a.weight_decay, a.seed);
    let w = fit
        .tensors
        .iter()
        .find(|(k, _)| k == "classifier.weight")
        .expect("weight");
    let b = fit.tensors.iter().find(|(k, _)| k == "classifier.bias").expect("bias");
    let test_top1 = eval::top1(&(ftest.matmul(&w.1.tr()) + &b.1), &test.labels);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    gati_core::files::write_atomic(&fit.tensors, &a.out)?;
    let report = Report {
        model: a.model,
        weights_sha256: weights::sha256_file(&weights)?,
        weights,
        data,
        out: a.out,
        classes: classes as usize,
        train_images: train.len(),
        test_images: test.len(),
        train_top1: fit.train_top1,
        test_top1,
        steps: a.steps,
        lr: a.lr,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    if a.json {
        return super::print_json(&report);
    }
    println!(
        "{}-way classifier on {} embeddings ({} training images): train top-1 {:.2}%, test top-1 {:.2}% ({} images) -> {}",
        report.classes,
        report.model,
        report.train_images,
        report.train_top1,
        report.test_top1,
        report.test_images,
        report.out.display()
    );
    Ok(())
}
