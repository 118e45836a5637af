//! Training cache models by distillation from the frozen base model.
//!
//! One base forward pass per batch feeds every candidate head at every layer at once; the loss is
//! α·T²·KL(softmax(z_base/T) ‖ softmax(z_cache/T)) + (1−α)·CE(z_cache, argmax z_base), summed over
//! heads (their parameters are disjoint, so each head gets exactly its own gradient). Ground-truth
//! labels are never used.

use crate::heads::HeadBank;
use gati_core::{data::Dataset, BaseModel};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Kind, Reduction, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub alpha: f64,
    pub temperature: f64,
    pub seed: u64,
    /// Train on the first N training images only.
    pub train_limit: Option<usize>,
    /// The dataset split(s) heads learn from (`train`, or e.g. `train+others` on LFW).
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Random crops (4-pixel zero padding) and horizontal flips of the training images.
    #[serde(default)]
    pub augment: bool,
    /// The last N images of the training split were held out of training (for calibration).
    #[serde(default)]
    pub holdout: usize,
    /// The smaller base `student` heads started from (e.g. `resnet20-jpeg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_init: Option<String>,
    /// A student's learning rate relative to a fresh head's (None: `CacheHead::lr_factor`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_lr_factor: Option<f64>,
}

fn default_train_split() -> String {
    "train".into()
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            alpha: 0.5,
            temperature: 6.0,
            seed: 0,
            train_limit: None,
            train_split: default_train_split(),
            augment: false,
            holdout: 0,
            student_init: None,
            student_lr_factor: None,
        }
    }
}

/// The distillation loss of one head, averaged over the batch.
pub fn distillation_loss(z_cache: &Tensor, z_base: &Tensor, alpha: f64, t: f64) -> Tensor {
    let b = z_cache.size()[0] as f64;
    let p_teacher = (z_base / t).softmax(-1, Kind::Float);
    let log_q = (z_cache / t).log_softmax(-1, Kind::Float);
    let kl = log_q.kl_div(&p_teacher, Reduction::Sum, false) / b;
    let ce = z_cache.cross_entropy_for_logits(&z_base.argmax(-1, false));
    kl * (alpha * t * t) + ce * (1.0 - alpha)
}

/// Per-head agreement with the base model over the last epoch (training data).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub epochs: usize,
    pub images: usize,
    pub seconds: f64,
    pub train_fidelity: Vec<f64>,
    /// The learning-rate factor the student (a bank has at most one, at the stem) finished at,
    /// relative to a fresh head's, after the guard's cuts.
    pub student_lr_factor: Option<f64>,
}

/// Trains every head of `bank` on `train` (base frozen). SGD with momentum, weight decay and a
/// cosine learning-rate schedule; deterministic for a given seed and thread count.
pub fn train(bank: &mut HeadBank, model: &BaseModel, train: &Dataset, cfg: &TrainConfig) -> TrainReport {
    let start = std::time::Instant::now();
    tch::manual_seed(cfg.seed as i64);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut opt = sgd(&bank.vs, cfg.lr, cfg.momentum, cfg.weight_decay);
    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let stages = bank.stages();
    let pb = gati_core::progress::bar(total_steps as u64, "train");
    let mut agree = vec![0i64; bank.heads.len()];
    let mut step = 0;
    let mut lr_scale = Vec::new();
    let mut guard = StudentGuard::arm(bank, model, train);
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        agree.iter_mut().for_each(|a| *a = 0);
        let mut seen = 0;
        for chunk in order.chunks(cfg.batch_size) {
            let lr = cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos());
            if step == 0 {
                lr_scale = first_batch_lr_scales(bank, model, train, chunk, &stages, cfg);
            }
            for (g, scale) in lr_scale.iter().enumerate() {
                opt.set_lr_group(g, lr * scale);
            }
            let (z_base, acts) = tch::no_grad(|| {
                let pixels = train.pixels(chunk);
                let pixels = if cfg.augment {
                    augment(&pixels, &mut rng)
                } else {
                    pixels
                };
                let x = model.preprocess(&pixels);
                model.forward_collect(&x, &stages)
            });
            let base_pred = z_base.argmax(-1, false);
            let mut loss = Tensor::zeros([], (Kind::Float, model.device()));
            for (i, h) in bank.heads.iter().enumerate() {
                let act = &acts[stages.binary_search(&h.stage).expect("collected stage")];
                let z = h.head.forward_t(act, true);
                agree[i] += z
                    .argmax(-1, false)
                    .eq_tensor(&base_pred)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                loss += distillation_loss(&z, &z_base, cfg.alpha, cfg.temperature);
            }
            opt.backward_step(&loss);
            step += 1;
            if let Some(g) = guard.as_mut() {
                if let Some(msg) = g.check(bank, step, &mut lr_scale) {
                    gati_core::progress::say(&pb, &msg);
                    // The student's momentum holds the fall's large gradients, and tch cannot clear
                    // one group's: a fresh optimizer (the other heads lose a few steps' momentum).
                    opt = sgd(&bank.vs, cfg.lr, cfg.momentum, cfg.weight_decay);
                }
            }
            seen += chunk.len();
            pb.inc(1);
            if step % 10 == 0 {
                pb.set_message(progress_message(bank, &agree, seen));
            }
            if pb.is_hidden() && !gati_core::progress::quiet() && step % (total_steps / 20).max(1) == 0 {
                // Logs and CI have no terminal for the bar: a line every 5% instead.
                eprintln!(
                    "train {step}/{total_steps} steps: {}",
                    progress_message(bank, &agree, seen)
                );
            }
        }
        let line = format!(
            "epoch {}/{}: {}",
            epoch + 1,
            cfg.epochs,
            progress_message(bank, &agree, n)
        );
        gati_core::progress::say(&pb, &line);
    }
    pb.finish_and_clear();
    TrainReport {
        epochs: cfg.epochs,
        images: n,
        seconds: start.elapsed().as_secs_f64(),
        train_fidelity: agree.iter().map(|&a| a as f64 / n.max(1) as f64).collect(),
        student_lr_factor: guard.map(|g| head_lr_factor(&bank.heads[g.head], cfg) / 10f64.powi(g.cuts as i32)),
    }
}

/// Training images a student's agreement is probed on, and the steps (after a start or a restart)
/// at which it is.
const GUARD_PROBE_IMAGES: usize = 512;
const GUARD_STEPS: [usize; 4] = [8, 16, 32, 64];
/// A fall in probe agreement larger than this restarts the student at a tenth of its rate.
const GUARD_DROP: f64 = 0.03;
const GUARD_MAX_CUTS: usize = 3;

/// A student starts trained, and distillation at too high a rate undoes that within a few steps
/// (the as-shipped ResNet-56 and ResNet-20 at the default rate: 84% → 10–15% probe agreement in 8
/// steps, where a tenth of the rate holds). The guard probes the student's agreement with the base model on fixed
/// training images early in training; on a fall it restores the starting weights and divides the
/// student's rate by 10, so no pair needs its rate found by hand.
struct StudentGuard {
    head: usize,
    probe: Tensor,
    base_pred: Tensor,
    start: f64,
    snapshot: Vec<(Tensor, Tensor)>,
    restarted_at: usize,
    /// Times the student's rate has been divided by 10.
    cuts: usize,
}

impl StudentGuard {
    /// The guard of the bank's student (a bank has at most one, at the stem), its starting
    /// agreement measured; None without a student.
    fn arm(bank: &HeadBank, model: &BaseModel, train: &Dataset) -> Option<Self> {
        let head = bank
            .heads
            .iter()
            .position(|h| h.variant == crate::heads::Variant::Student)?;
        let h = &bank.heads[head];
        let first: Vec<usize> = (0..GUARD_PROBE_IMAGES.min(train.len())).collect();
        let (z, mut acts) =
            tch::no_grad(|| model.forward_collect(&model.preprocess(&train.pixels(&first)), &[h.stage]));
        let prefix = format!("{}.", h.key);
        let snapshot = bank
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, v)| {
                let saved = v.detach().copy();
                (v, saved)
            })
            .collect();
        let mut g = Self {
            head,
            probe: acts.remove(0),
            base_pred: z.argmax(-1, false),
            start: 0.0,
            snapshot,
            restarted_at: 0,
            cuts: 0,
        };
        g.start = g.agreement(bank);
        Some(g)
    }

    fn agreement(&self, bank: &HeadBank) -> f64 {
        tch::no_grad(|| {
            bank.heads[self.head]
                .head
                .forward_t(&self.probe, false)
                .argmax(-1, false)
                .eq_tensor(&self.base_pred)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        })
    }

    /// After training step `step`: on a fall at a probe step, restarts the student from its
    /// starting weights at a tenth of its rate and says so.
    fn check(&mut self, bank: &HeadBank, step: usize, lr_scale: &mut [f64]) -> Option<String> {
        if self.cuts >= GUARD_MAX_CUTS || !GUARD_STEPS.contains(&(step - self.restarted_at)) {
            return None;
        }
        let now = self.agreement(bank);
        if now >= self.start - GUARD_DROP {
            return None;
        }
        tch::no_grad(|| {
            for (var, saved) in &self.snapshot {
                var.shallow_clone().copy_(saved);
            }
        });
        lr_scale[self.head] /= 10.0;
        self.cuts += 1;
        let at = step - self.restarted_at;
        self.restarted_at = step;
        Some(format!(
            "student {}: agreement on {} training images fell from {:.1}% to {:.1}% in {at} steps; \
             restarted from its starting weights at a tenth of its learning rate",
            bank.heads[self.head].key,
            self.probe.size()[0],
            100.0 * self.start,
            100.0 * now,
        ))
    }
}

/// Padding of the random crops: what the base models' own training used on CIFAR.
const CROP_PAD: i64 = 4;

/// Each image of a `u8` batch `[B, C, H, W]` cropped at a random offset from its zero-padded copy
/// and mirrored left-right with probability 1/2.
pub fn augment(pixels: &Tensor, rng: &mut StdRng) -> Tensor {
    use rand::Rng;
    let size = pixels.size();
    let (h, w) = (size[2], size[3]);
    let padded = pixels.constant_pad_nd([CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD]);
    let crops: Vec<Tensor> = (0..size[0])
        .map(|i| {
            let (dy, dx) = (rng.gen_range(0..=2 * CROP_PAD), rng.gen_range(0..=2 * CROP_PAD));
            let c = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
            if rng.gen_bool(0.5) {
                c.flip([2])
            } else {
                c
            }
        })
        .collect();
    Tensor::stack(&crops, 0)
}

/// The optimiser every cache head trains with, offline and online: SGD with Nesterov momentum and
/// weight decay.
pub fn sgd(vs: &nn::VarStore, lr: f64, momentum: f64, weight_decay: f64) -> nn::Optimizer {
    nn::Sgd {
        momentum,
        dampening: 0.0,
        wd: weight_decay,
        nesterov: true,
    }
    .build(vs, lr)
    .expect("SGD over a var store")
}

/// SGD's stable step on a linear layer shrinks as its inputs' summed square grows (fan-in times the
/// activation's mean square). The paper's flattened heads see thousands of raw activations and
/// diverge at a learning rate the small heads need, so each head's rate is scaled by
/// `min(1, 64 / (fan_in · E[x²]))`, measured on a batch of its activations.
pub fn lr_scale(fan_in: i64, activations: &Tensor) -> f64 {
    let ms = activations.square().mean(Kind::Float).double_value(&[]).max(1e-6);
    (64.0 / (fan_in as f64 * ms)).min(1.0)
}

/// `lr_scale` of every head, measured once on the first batch.
fn first_batch_lr_scales(
    bank: &HeadBank,
    model: &BaseModel,
    train: &Dataset,
    chunk: &[usize],
    stages: &[usize],
    cfg: &TrainConfig,
) -> Vec<f64> {
    let acts = tch::no_grad(|| model.forward_collect(&model.preprocess(&train.pixels(chunk)), stages).1);
    bank.heads
        .iter()
        .map(|h| {
            head_lr_factor(h, cfg) * lr_scale(h.head.fan_in(), &acts[stages.binary_search(&h.stage).expect("stage")])
        })
        .collect()
}

/// A head's learning rate relative to the base rate, before the input-size scaling.
fn head_lr_factor(h: &crate::heads::HeadEntry, cfg: &TrainConfig) -> f64 {
    match (h.variant, cfg.student_lr_factor) {
        (crate::heads::Variant::Student, Some(f)) => f,
        _ => h.head.lr_factor(),
    }
}

/// "fidelity first/mid/last layer": the best variant's running agreement at three depths.
fn progress_message(bank: &HeadBank, agree: &[i64], seen: usize) -> String {
    let stages = bank.stages();
    let picks = [stages[0], stages[stages.len() / 2], stages[stages.len() - 1]];
    let mut parts = Vec::new();
    for s in picks {
        let best = bank
            .heads
            .iter()
            .zip(agree)
            .filter(|(h, _)| h.stage == s)
            .map(|(_, &a)| a as f64 / seen.max(1) as f64)
            .fold(0.0, f64::max);
        let layer = &bank.heads.iter().find(|h| h.stage == s).expect("head").layer;
        parts.push(format!("{layer} {:.1}%", 100.0 * best));
    }
    format!("fidelity {}", parts.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every crop is a window of the zero-padded image, mirrored or not; the draws differ.
    #[test]
    fn augment_crops_windows_of_the_padded_image_and_flips_some() {
        let img = Tensor::arange(3 * 8 * 8, (Kind::Int64, tch::Device::Cpu))
            .remainder(251)
            .to_kind(Kind::Uint8)
            .view([1, 3, 8, 8]);
        let batch = img.repeat([64, 1, 1, 1]);
        let out = augment(&batch, &mut StdRng::seed_from_u64(1));
        assert_eq!(out.size(), vec![64, 3, 8, 8]);
        let padded = img.get(0).constant_pad_nd([CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD]);
        let mut distinct = std::collections::HashSet::new();
        for i in 0..64 {
            let crop = out.get(i);
            let found = (0..=2 * CROP_PAD).any(|dy| {
                (0..=2 * CROP_PAD).any(|dx| {
                    let w = padded.narrow(1, dy, 8).narrow(2, dx, 8);
                    w.equal(&crop) || w.flip([2]).equal(&crop)
                })
            });
            assert!(found, "crop {i} is not a (mirrored) window of the padded image");
            distinct.insert(Vec::<u8>::try_from(crop.flatten(0, -1)).unwrap());
        }
        assert!(distinct.len() > 20, "only {} distinct crops in 64", distinct.len());
    }
}
