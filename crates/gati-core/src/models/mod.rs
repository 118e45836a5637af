//! Base models as ordered lists of stages (stem, every residual block, head) that can run one
//! at a time, so a request can stop after any stage when a cache answers.

mod cifar_resnet;
pub mod face_resnet;
mod imagenet_resnet;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// One step of a base model: a pure function of the previous stage's output (inference mode).
/// Not `Sync`: tch tensors are not, so each serving thread owns its model.
pub trait Forward: Send + std::fmt::Debug {
    fn forward(&self, x: &Tensor) -> Tensor;

    /// Called once the weights are loaded (they never change afterwards: base models are frozen):
    /// precompute what makes the forward pass faster, e.g. fused weights in another layout.
    fn prepare(&mut self) {}
}

/// Per-channel input normalisation applied to RGB pixels in [0, 1].
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// ImageNet statistics; the CIFAR ResNets in `../shared/` were trained with these too.
pub const IMAGENET_NORM: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// What the last stage outputs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Logits over `num_classes` classes: what caches predict.
    Classification,
    /// A `num_classes`-dimensional embedding (face verification); not cacheable as is.
    Embedding,
}

/// What a caller must know about a model to feed it: input shape, classes, normalisation.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub name: String,
    /// `[C, H, W]` of one input.
    pub input_shape: [i64; 3],
    /// Classes, or the embedding's width for `Task::Embedding`.
    pub num_classes: i64,
    pub normalization: Normalization,
    pub task: Task,
}

impl ModelSpec {
    /// Names of the classes, in index order (`class<i>` where the model has none).
    pub fn class_names(&self) -> Vec<String> {
        let known: &[&str] = match self.name.as_str() {
            "face-lfw62" => &face_resnet::LFW62_NAMES,
            _ if self.num_classes == 10 => &crate::data::CIFAR10_CLASSES,
            _ => &[],
        };
        if known.len() == self.num_classes as usize {
            known.iter().map(|s| s.to_string()).collect()
        } else {
            (0..self.num_classes).map(|i| format!("class{i}")).collect()
        }
    }

    /// Pixels (`u8`, `[N, C, H, W]`) to the normalised float input of this model, on `device`.
    pub fn normalize(&self, pixels: &Tensor, device: Device) -> Tensor {
        let n = &self.normalization;
        let mean = Tensor::from_slice(&n.mean).view([1, 3, 1, 1]).to_device(device);
        let std = Tensor::from_slice(&n.std).view([1, 3, 1, 1]).to_device(device);
        (pixels.to_device(device).to_kind(Kind::Float) / 255.0 - mean) / std
    }
}

/// A named stage and the shape of its output for one input.
#[derive(Debug, Clone, Serialize)]
pub struct StageInfo {
    pub name: String,
    /// Output shape for batch 1, e.g. `[1, 16, 32, 32]`.
    pub output_shape: Vec<i64>,
}

struct Stage {
    name: String,
    module: Box<dyn Forward>,
}

/// A base model: its parameters and its ordered stages.
pub struct BaseModel {
    spec: ModelSpec,
    vs: nn::VarStore,
    stages: Vec<Stage>,
    infos: Vec<StageInfo>,
}

/// Every model name `BaseModel::new` accepts. `resnetNN-jpeg` is `resnetNN` fine-tuned on the JPEG
/// training split it serves, `resnetNN-jpeg-exits` the same trained with early-exit heads
/// (`scripts/finetune-bases.sh`; weights committed under `models/`); `resnet56-jpeg-frames` is
/// `resnet56-jpeg` fit to camera frames (`FRAME_SHARE=... scripts/finetune-bases.sh`; not committed:
/// it did not pay, docs/results.md); `resnet20-jpeg-kd56` is `resnet20-jpeg` distilled from
/// `resnet56-jpeg` through a student's adapter (`scripts/py/student_feasibility.py`), what its
/// `student` caches start from.
pub const MODEL_NAMES: &[&str] = &[
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet20-jpeg",
    "resnet32-jpeg",
    "resnet44-jpeg",
    "resnet56-jpeg",
    "resnet20-jpeg-exits",
    "resnet56-jpeg-exits",
    "resnet56-jpeg-frames",
    "resnet20-jpeg-kd56",
    "resnet18",
    "resnet34",
    "resnet50",
    "face-resnet",
    "face-lfw62",
];

/// The depth of a CIFAR ResNet's name (`resnet56`, `resnet56-jpeg`, ...): 20, 32, 44 or 56.
fn cifar_depth(name: &str) -> Option<usize> {
    let depth = name.strip_prefix("resnet")?.split('-').next()?.parse().ok()?;
    [20, 32, 44, 56].contains(&depth).then_some(depth)
}

impl BaseModel {
    /// Builds `name` with freshly initialised parameters on `device`.
    pub fn new(name: &str, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let (spec, stages) = match (name, cifar_depth(name).filter(|_| MODEL_NAMES.contains(&name))) {
            (_, Some(depth)) => cifar_resnet::build(&vs.root(), name, (depth - 2) / 6, 10),
            ("resnet18", _) => imagenet_resnet::build(&vs.root(), name, imagenet_resnet::Depth::R18, 1000),
            ("resnet34", _) => imagenet_resnet::build(&vs.root(), name, imagenet_resnet::Depth::R34, 1000),
            ("resnet50", _) => imagenet_resnet::build(&vs.root(), name, imagenet_resnet::Depth::R50, 1000),
            ("face-resnet", _) => face_resnet::build(&vs.root(), name, None),
            ("face-lfw62", _) => face_resnet::build(&vs.root(), name, Some(face_resnet::LFW62_CLASSES)),
            (other, _) => bail!("unknown model '{other}' (known: {})", MODEL_NAMES.join(", ")),
        };
        let mut model = Self {
            spec,
            vs,
            stages,
            infos: Vec::new(),
        };
        model.infos = model.probe_shapes();
        Ok(model)
    }

    /// Builds `name` and loads its parameters from a safetensors file.
    pub fn load(name: &str, weights: &Path, device: Device) -> Result<Self> {
        let mut model = Self::new(name, device)?;
        crate::weights::load_into(&mut model.vs, weights).with_context(|| format!("loading {name} weights"))?;
        tch::no_grad(|| model.stages.iter_mut().for_each(|s| s.module.prepare()));
        Ok(model)
    }

    fn probe_shapes(&self) -> Vec<StageInfo> {
        let _guard = tch::no_grad_guard();
        let [c, h, w] = self.spec.input_shape;
        let mut x = Tensor::zeros([1, c, h, w], (Kind::Float, self.vs.device()));
        self.stages
            .iter()
            .map(|s| {
                x = s.module.forward(&x);
                StageInfo {
                    name: s.name.clone(),
                    output_shape: x.size(),
                }
            })
            .collect()
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    /// Names and batch-1 output shapes of all stages, in order.
    pub fn stages(&self) -> &[StageInfo] {
        &self.infos
    }

    /// Index of the stage called `name`.
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.infos.iter().position(|s| s.name == name)
    }

    /// Runs stage `k` on the output of stage `k - 1` (or on the normalised input for `k = 0`).
    pub fn run_stage(&self, k: usize, x: &Tensor) -> Tensor {
        self.stages[k].module.forward(x)
    }

    /// The whole forward pass: normalised input to logits.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_range(0, self.stages.len(), x)
    }

    /// Runs stages `from..to` on `x` (the output of stage `from - 1`).
    pub fn forward_range(&self, from: usize, to: usize, x: &Tensor) -> Tensor {
        let mut out = self.stages[from].module.forward(x);
        for s in &self.stages[from + 1..to] {
            out = s.module.forward(&out);
        }
        out
    }

    /// The whole forward pass, also returning the outputs of `stages` (ascending stage indices).
    pub fn forward_collect(&self, x: &Tensor, stages: &[usize]) -> (Tensor, Vec<Tensor>) {
        let mut kept = Vec::with_capacity(stages.len());
        let mut want = stages.iter().peekable();
        let mut h = x.shallow_clone();
        for (k, s) in self.stages.iter().enumerate() {
            h = s.module.forward(&h);
            if want.peek() == Some(&&k) {
                kept.push(h.shallow_clone());
                want.next();
            }
        }
        (h, kept)
    }

    /// Pixels (`u8`, `[N, C, H, W]`) to the normalised float input the model expects.
    pub fn preprocess(&self, pixels: &Tensor) -> Tensor {
        self.spec.normalize(pixels, self.device())
    }
}

impl std::fmt::Debug for BaseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseModel")
            .field("spec", &self.spec)
            .field("stages", &self.infos.len())
            .finish()
    }
}

/// A CIFAR ResNet's residual blocks and head (`blocks` per stage; 3: ResNet-20's) reading a
/// 16-channel stem output, parameters named as in its checkpoints (`layer1.0.conv1.weight`,
/// `linear.weight`): the body of a `student` cache.
pub fn cifar_resnet_body(p: &nn::Path, blocks: usize, classes: i64) -> Vec<Box<dyn Forward>> {
    cifar_resnet::residual_stages(p, blocks, classes)
        .into_iter()
        .map(|s| s.module)
        .collect()
}

/// The same values laid out NHWC in memory (logical shape unchanged): oneDNN then runs the
/// convolutions without reordering every input and output, about a quarter faster at batch 1
/// (measured, docs/results.md).
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A conv followed by inference-mode BatchNorm, as one conv: its weights (channels-last)
/// and bias. Two fewer ops per conv at batch 1, where op overhead dominates.
fn fold_bn(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> (Tensor, Tensor) {
    let eps = nn::BatchNormConfig::default().eps; // what `bn` builds with
    let scale = bn.ws.as_ref().expect("affine BatchNorm") / (&bn.running_var + eps).sqrt();
    let shift = bn.bs.as_ref().expect("affine BatchNorm") - &bn.running_mean * &scale;
    let c = scale.size()[0];
    let w = &conv.ws * scale.view([c, 1, 1, 1]);
    let b = match &conv.bs {
        Some(cb) => cb * &scale + shift,
        None => shift,
    };
    (channels_last(&w), b)
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// BatchNorm in inference mode (running statistics), as every base model is frozen.
fn bn_eval(b: &nn::BatchNorm, x: &Tensor) -> Tensor {
    nn::ModuleT::forward_t(b, x, false)
}
