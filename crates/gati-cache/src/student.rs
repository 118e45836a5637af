//! Starting `student` caches from a smaller base trained on the same data (e.g. `resnet20-jpeg` for
//! `resnet56-jpeg`): its residual blocks and head are copied, and the adapter, which turns the
//! base's activation into what the smaller base's own stem would have given, is fitted by least
//! squares on a batch of training images, or read from the file the smaller base was distilled
//! with for this base (`gati_core::paths::student_adapter`). Distillation then fine-tunes the whole
//! student.

use crate::heads::{HeadBank, Variant, STUDENT_BLOCKS, STUDENT_STEM_CHANNELS};
use anyhow::{bail, Context, Result};
use gati_core::BaseModel;
use std::path::Path;
use tch::{Kind, Tensor};

/// The adapter's ridge, relative to the mean squared patch value.
const RIDGE: f64 = 1e-4;

/// Images the adapter is fitted on (128 · 32 · 32 = 131,072 positions for 145 unknowns).
pub const ADAPTER_FIT_IMAGES: usize = 128;

/// Initialises every student head of `bank` from `small`; `pixels` are training images (`u8`
/// `[N, 3, H, W]`) to fit the adapter on, unless `adapter` names a file holding it (`adapter.weight`,
/// `adapter.bias`: the adapter `small` was distilled through). Returns how many heads it
/// initialised.
pub fn initialise(
    bank: &mut HeadBank,
    model: &BaseModel,
    small: &BaseModel,
    pixels: &Tensor,
    adapter: Option<&Path>,
) -> Result<usize> {
    let _guard = tch::no_grad_guard();
    if small.num_stages() != 3 * STUDENT_BLOCKS + 2 || small.stage_index("layer3.2").is_none() {
        bail!(
            "--student-init {}: a student starts from a CIFAR ResNet-20 (stem, 3 x {STUDENT_BLOCKS} blocks, head)",
            small.spec().name
        );
    }
    let small_vars = small.var_store().variables();
    let bank_vars = bank.vs.variables();
    let mut done = 0;
    for h in bank.heads.iter().filter(|h| h.variant == Variant::Student) {
        let prefix = format!("{}.", h.key);
        for (name, var) in bank_vars.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let local = &name[prefix.len()..];
            if local.starts_with("adapter.") {
                continue;
            }
            let Some(src) = small_vars.get(local) else {
                bail!(
                    "--student-init {}: has no '{local}'; a student starts from a CIFAR ResNet-20",
                    small.spec().name
                );
            };
            if src.size() != var.size() {
                bail!(
                    "--student-init {}: '{local}' is {:?}, a student's is {:?}; a student starts from a CIFAR ResNet-20",
                    small.spec().name,
                    src.size(),
                    var.size()
                );
            }
            let mut v = var.shallow_clone();
            v.copy_(src);
        }
        let conv = h.head.student_adapter().context("a student head has an adapter")?;
        match adapter {
            Some(path) => load_adapter(conv, path)?,
            None => {
                let activation = model.forward_collect(&model.preprocess(pixels), &[h.stage]).1.remove(0);
                let target = small.run_stage(0, &small.preprocess(pixels));
                fit_adapter(conv, &activation, &target)
                    .with_context(|| format!("fitting the adapter of the student at {}", h.layer))?
            }
        }
        done += 1;
    }
    Ok(done)
}

/// Sets the 3x3 conv `adapter` (with bias) to the one stored in `path`.
fn load_adapter(adapter: &tch::nn::Conv2D, path: &Path) -> Result<()> {
    let stored = gati_core::weights::read(path)?;
    let bias = adapter.bs.as_ref().context("the adapter has a bias")?;
    for (name, var) in [("adapter.weight", &adapter.ws), ("adapter.bias", bias)] {
        let Some(t) = stored.get(name) else {
            bail!("{}: has no '{name}'", path.display());
        };
        if t.size() != var.size() {
            bail!(
                "{}: '{name}' is {:?}, the student's adapter {:?}",
                path.display(),
                t.size(),
                var.size()
            );
        }
        var.shallow_clone().copy_(&t.to_kind(var.kind()));
    }
    Ok(())
}

/// Sets the 3x3 conv `adapter` (with bias) to the least-squares map from `activation` `[N, C, H, W]`
/// to `target` `[N, 16, H, W]` (the smaller base's stem output, after its ReLU; the student applies
/// a ReLU after the adapter too).
fn fit_adapter(adapter: &tch::nn::Conv2D, activation: &Tensor, target: &Tensor) -> Result<()> {
    let (a, t) = (activation.size(), target.size());
    if a[2..] != t[2..] || t[1] != STUDENT_STEM_CHANNELS {
        bail!(
            "the activation is {:?} and the smaller base's stem output {:?}: a student needs the same height and width",
            &a[1..],
            &t[1..]
        );
    }
    let c = a[1];
    // [N, C·9, H·W] → one row of C·9 patch values (and a 1 for the bias) per position.
    let cols = activation
        .im2col([3, 3], [1, 1], [1, 1], [1, 1])
        .transpose(1, 2)
        .reshape([-1, c * 9]);
    let x = Tensor::cat(&[cols.shallow_clone(), cols.ones_like().narrow(1, 0, 1)], 1).to_kind(Kind::Double);
    let y = target
        .permute([0, 2, 3, 1])
        .reshape([-1, STUDENT_STEM_CHANNELS])
        .to_kind(Kind::Double);
    // Ridge on the normal equations: dead stem channels make the problem rank-deficient, and
    // LAPACK's pivoted least squares then fitted 9–25% relative error from one solve to the next;
    // this gives 9.3% every time.
    let xtx = x.tr().mm(&x);
    let ridge = RIDGE * xtx.diagonal(0, 0, 1).mean(Kind::Double).double_value(&[]);
    let eye = Tensor::eye(c * 9 + 1, (Kind::Double, x.device()));
    let solution = Tensor::linalg_solve(&(xtx + eye * ridge), &x.tr().mm(&y), true);
    let solution = solution.to_kind(Kind::Float);
    let weights = solution
        .narrow(0, 0, c * 9)
        .transpose(0, 1)
        .reshape([STUDENT_STEM_CHANNELS, c, 3, 3]);
    let mut ws = adapter.ws.shallow_clone();
    ws.copy_(&weights);
    let bias = adapter.bs.as_ref().context("the adapter has a bias")?;
    let mut bs = bias.shallow_clone();
    bs.copy_(&solution.get(c * 9));
    Ok(())
}
