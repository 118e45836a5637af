//! Cache model variants. Each maps one stage's activation `[B, C, H, W]` to class logits `[B, K]`.
//!
//! The paper's three work on the flattened activation (D = C·H·W): `fc`, `pool`, `conv`. Ours keep
//! the spatial layout and cost a fraction: `gap` (global average pool + MLP), `conv-pool`
//! (1x1 conv + BN + ReLU + 4x4 adaptive pool + linear), and the stronger 3x3 heads of published
//! frozen-backbone early exits: `conv3-pool` (3x3 conv) and `conv3-mix` (3x3 conv, then a learned
//! mix of max and average pooling), and `branch`, a small convolutional side network (two 3x3 convs
//! that downsample to the last stage's resolution) for early layers, where a linear read-out of the
//! activation is rarely sure. `student` goes further: a whole small network (ResNet-20's blocks behind
//! an adapter), started from a smaller base trained on the same data and distilled from this one.

use anyhow::{bail, Context, Result};
use gati_core::names::Named;
use gati_core::BaseModel;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{nn, nn::ModuleT, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Linear(D, 1024) – ReLU – Linear(1024, K).
    Fc,
    /// AdaptiveAvgPool1d(min(D, 4096)) – Linear(·, 1024) – ReLU – Linear(1024, K).
    Pool,
    /// Conv1d(1→1, kernel 3) – ReLU – Linear(D − 2, K).
    Conv,
    /// Global average pool – Linear(C, 128) – ReLU – Linear(128, K).
    Gap,
    /// Conv1x1(C→32) – BN – ReLU – AdaptiveAvgPool2d(4x4) – Linear(512, K).
    ConvPool,
    /// Conv3x3(C→32; stride 2 on maps of 32x32 and more) – BN – ReLU – AdaptiveAvgPool2d(4x4) –
    /// Linear(512, K).
    Conv3Pool,
    /// As `conv3-pool` (same conv and stride), but pooled to 4x4 by σ(a)·max + (1−σ(a))·avg, a
    /// learned – Linear(512, K).
    Conv3Mix,
    /// Conv3x3(C→64) – BN – ReLU – Conv3x3(64→64) – BN – ReLU – global average pool –
    /// Linear(64, K); each conv at stride 2 while its input map is 16x16 or larger.
    Branch,
    /// Conv3x3(C→16, bias) – ReLU – a CIFAR ResNet-20's residual blocks and head (272k
    /// parameters). Started from a trained ResNet-20 (`student::initialise`: its blocks, and the
    /// adapter fitted by least squares to reproduce its stem), then distilled like every head.
    Student,
}

/// What `all` means: every variant but `student`, which needs a smaller base to start from and
/// costs about 40% of a ResNet-56 at batch 1.
pub const ALL_VARIANTS: [Variant; 8] = [
    Variant::Fc,
    Variant::Pool,
    Variant::Conv,
    Variant::Gap,
    Variant::ConvPool,
    Variant::Conv3Pool,
    Variant::Conv3Mix,
    Variant::Branch,
];

impl Named for Variant {
    fn what() -> &'static str {
        "cache variant"
    }
}

impl Variant {
    /// Parses a comma-separated list, or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        if s == "all" {
            return Ok(ALL_VARIANTS.to_vec());
        }
        s.split(',').map(|v| Self::parse(v.trim())).collect()
    }
}

const HIDDEN: i64 = 1024;
const POOL_MAX: i64 = 4096;
const GAP_HIDDEN: i64 = 128;
const REDUCED: i64 = 32;
const GRID: i64 = 4;
const BRANCH_WIDTH: i64 = 64;
/// A branch conv reads maps at least this large at stride 2.
const BRANCH_STRIDE_FROM: i64 = 16;
/// A student's body: ResNet-20's, 3 blocks per stage after a 16-channel stem.
pub const STUDENT_BLOCKS: usize = 3;
pub const STUDENT_STEM_CHANNELS: i64 = 16;
/// A student starts from trained weights and its BatchNorms keep the smaller base's statistics: at
/// a fifth of a fresh head's learning rate its fidelity fell from 93% to 57% within five steps; at a
/// twentieth it holds and fine-tunes.
pub const STUDENT_LR_FACTOR: f64 = 0.05;

/// One cache model: a variant built for one activation shape.
#[derive(Debug)]
pub struct CacheHead {
    pub variant: Variant,
    layers: Layers,
}

#[derive(Debug)]
enum Layers {
    Fc {
        l1: nn::Linear,
        l2: nn::Linear,
    },
    Pool {
        width: i64,
        l1: nn::Linear,
        l2: nn::Linear,
    },
    Conv {
        conv: nn::Conv1D,
        l: nn::Linear,
    },
    Gap {
        l1: nn::Linear,
        l2: nn::Linear,
    },
    ConvPool {
        conv: nn::Conv2D,
        bn: nn::BatchNorm,
        /// Mixed pooling's logit (None: average pooling).
        mix: Option<Tensor>,
        l: nn::Linear,
    },
    Branch {
        convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
        l: nn::Linear,
    },
    Student {
        adapter: nn::Conv2D,
        body: Vec<Box<dyn gati_core::models::Forward>>,
    },
}

impl CacheHead {
    /// Builds `variant` under `p` for activations of shape `[C, H, W]` and `classes` outputs.
    pub fn new(p: &nn::Path, variant: Variant, chw: [i64; 3], classes: i64) -> Self {
        let [c, h, w] = chw;
        let d = c * h * w;
        let lin = |name: &str, i: i64, o: i64| nn::linear(p / name, i, o, Default::default());
        let layers = match variant {
            Variant::Fc => Layers::Fc {
                l1: lin("l1", d, HIDDEN),
                l2: lin("l2", HIDDEN, classes),
            },
            Variant::Pool => {
                let width = d.min(POOL_MAX);
                Layers::Pool {
                    width,
                    l1: lin("l1", width, HIDDEN),
                    l2: lin("l2", HIDDEN, classes),
                }
            }
            Variant::Conv => {
                // Starts as the identity ([0, 1, 0], no bias): with one channel behind a ReLU, a
                // random kernel that goes negative everywhere kills the head for good.
                let conv = nn::conv1d(
                    p / "conv",
                    1,
                    1,
                    3,
                    nn::ConvConfig {
                        ws_init: nn::Init::Const(0.0),
                        bs_init: nn::Init::Const(0.0),
                        ..Default::default()
                    },
                );
                tch::no_grad(|| {
                    let _ = conv.ws.narrow(2, 1, 1).fill_(1.0);
                });
                Layers::Conv {
                    conv,
                    l: lin("l", d - 2, classes),
                }
            }
            Variant::Gap => Layers::Gap {
                l1: lin("l1", c, GAP_HIDDEN),
                l2: lin("l2", GAP_HIDDEN, classes),
            },
            Variant::ConvPool | Variant::Conv3Pool | Variant::Conv3Mix => {
                let k = if variant == Variant::ConvPool { 1 } else { 3 };
                // A 3x3 conv at full resolution costs as much as a residual block of the first
                // stage; pooling to 4x4 follows anyway, so large maps are read at stride 2.
                let stride = if k == 3 && h >= 32 { 2 } else { 1 };
                Layers::ConvPool {
                    conv: nn::conv2d(
                        p / "conv",
                        c,
                        REDUCED,
                        k,
                        nn::ConvConfig {
                            bias: false,
                            padding: k / 2,
                            stride,
                            ..Default::default()
                        },
                    ),
                    bn: nn::batch_norm2d(p / "bn", REDUCED, Default::default()),
                    mix: (variant == Variant::Conv3Mix).then(|| p.zeros("mix", &[1])),
                    l: lin("l", REDUCED * GRID * GRID, classes),
                }
            }
            Variant::Branch => {
                let mut size = h.min(w);
                let mut conv_bn = |name: &str, input: i64| {
                    let stride = if size >= BRANCH_STRIDE_FROM { 2 } else { 1 };
                    size = (size + stride - 1) / stride;
                    let config = nn::ConvConfig {
                        bias: false,
                        padding: 1,
                        stride,
                        ..Default::default()
                    };
                    (
                        nn::conv2d(p / format!("conv{name}"), input, BRANCH_WIDTH, 3, config),
                        nn::batch_norm2d(p / format!("bn{name}"), BRANCH_WIDTH, Default::default()),
                    )
                };
                let first = conv_bn("1", c);
                let second = conv_bn("2", BRANCH_WIDTH);
                Layers::Branch {
                    convs: vec![first, second],
                    l: lin("l", BRANCH_WIDTH, classes),
                }
            }
            Variant::Student => Layers::Student {
                adapter: nn::conv2d(
                    p / "adapter",
                    c,
                    STUDENT_STEM_CHANNELS,
                    3,
                    nn::ConvConfig {
                        padding: 1,
                        ..Default::default()
                    },
                ),
                body: gati_core::models::cifar_resnet_body(p, STUDENT_BLOCKS, classes),
            },
        };
        Self { variant, layers }
    }

    /// Inputs of the first weight layer (training scales each head's learning rate by it).
    pub fn fan_in(&self) -> i64 {
        match &self.layers {
            Layers::Fc { l1, .. } | Layers::Pool { l1, .. } | Layers::Gap { l1, .. } => l1.ws.size()[1],
            Layers::Conv { l, .. } => l.ws.size()[1],
            Layers::ConvPool { conv, .. } => conv.ws.size()[1..].iter().product(),
            Layers::Branch { convs, .. } => convs[0].0.ws.size()[1..].iter().product(),
            Layers::Student { adapter, .. } => adapter.ws.size()[1..].iter().product(),
        }
    }

    /// Multiplies the head's learning rate (offline and online).
    pub fn lr_factor(&self) -> f64 {
        match self.layers {
            Layers::Student { .. } => STUDENT_LR_FACTOR,
            _ => 1.0,
        }
    }

    /// A student's adapter (the only part not taken from the smaller base).
    pub fn student_adapter(&self) -> Option<&nn::Conv2D> {
        match &self.layers {
            Layers::Student { adapter, .. } => Some(adapter),
            _ => None,
        }
    }

    /// Derives what serving runs from the parameters where a variant has something faster to run
    /// (a student's convs with their BatchNorms folded in). Call it again whenever the parameters
    /// change; never train a prepared head.
    pub fn prepare(&mut self) {
        if let Layers::Student { body, .. } = &mut self.layers {
            tch::no_grad(|| body.iter_mut().for_each(|m| m.prepare()));
        }
    }

    /// A prepared copy of the head stored under `key` in `vs`, its parameters sharing `vs`'s
    /// storage: a copy to serve (or time) apart from the one that trains.
    pub fn prepared_copy(vs: &nn::VarStore, key: &str, variant: Variant, chw: [i64; 3], classes: i64) -> Result<Self> {
        let copy_vs = nn::VarStore::new(vs.device());
        let mut head = Self::new(&(copy_vs.root() / key), variant, chw, classes);
        let ours = vs.variables();
        for (name, mut t) in copy_vs.variables() {
            let Some(src) = ours.get(&name) else {
                bail!("cache '{key}': its copy has a parameter '{name}' that the cache lacks");
            };
            tch::no_grad(|| t.set_data(src));
        }
        head.prepare();
        Ok(head)
    }

    /// Logits for a batch of activations; `train` only matters for BatchNorm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let b = x.size()[0];
        match &self.layers {
            Layers::Fc { l1, l2 } => x.reshape([b, -1]).apply(l1).relu().apply(l2),
            Layers::Pool { width, l1, l2 } => x
                .reshape([b, 1, -1])
                .adaptive_avg_pool1d([*width])
                .reshape([b, -1])
                .apply(l1)
                .relu()
                .apply(l2),
            Layers::Conv { conv, l } => x.reshape([b, 1, -1]).apply(conv).relu().reshape([b, -1]).apply(l),
            Layers::Gap { l1, l2 } => x.mean_dim([2i64, 3].as_slice(), false, None).apply(l1).relu().apply(l2),
            Layers::ConvPool { conv, bn, mix, l } => {
                let y = bn.forward_t(&x.apply(conv), train).relu();
                let avg = y.adaptive_avg_pool2d([GRID, GRID]);
                let pooled = match mix {
                    None => avg,
                    Some(a) => {
                        let w = a.sigmoid();
                        y.adaptive_max_pool2d([GRID, GRID]).0 * &w + avg * (1.0 - w)
                    }
                };
                pooled.reshape([b, -1]).apply(l)
            }
            Layers::Branch { convs, l } => convs
                .iter()
                .fold(x.shallow_clone(), |y, (conv, bn)| {
                    bn.forward_t(&y.apply(conv), train).relu()
                })
                .mean_dim([2i64, 3].as_slice(), false, None)
                .apply(l),
            // The body's BatchNorms run on the smaller base's statistics (as its own blocks do):
            // fine-tuning moves their affine parameters only.
            Layers::Student { adapter, body } => body.iter().fold(x.apply(adapter).relu(), |h, m| m.forward(&h)),
        }
    }
}

/// Key prefix of a head's variables: `<layer with '.' → '_'>/<variant>`.
pub fn head_key(layer: &str, variant: Variant) -> String {
    format!("{}__{}", layer.replace('.', "_"), variant.name().replace('-', "_"))
}

#[derive(Debug)]
pub struct HeadEntry {
    pub layer: String,
    pub stage: usize,
    pub variant: Variant,
    pub key: String,
    pub params: i64,
    pub head: CacheHead,
}

/// All candidate heads of one base model.
pub struct HeadBank {
    pub vs: nn::VarStore,
    pub heads: Vec<HeadEntry>,
}

impl HeadBank {
    /// Fresh heads for every `variant` at every stage in `stages` (ascending).
    pub fn new(model: &BaseModel, stages: &[usize], variants: &[Variant]) -> Result<Self> {
        let vs = nn::VarStore::new(model.device());
        let classes = model.spec().num_classes;
        let mut heads = Vec::new();
        for &s in stages {
            let info = model.stages().get(s).with_context(|| format!("no stage {s}"))?;
            let shape = &info.output_shape;
            if shape.len() != 4 {
                bail!(
                    "stage {} has output shape {:?}; caches attach to 4-d activations",
                    info.name,
                    shape
                );
            }
            for &v in variants {
                // A student replaces the base's whole body with a smaller one: it reads the stem;
                // later, the base has spent more without giving the student more to start from.
                if v == Variant::Student && s != 0 {
                    continue;
                }
                let key = head_key(&info.name, v);
                let before: i64 = param_count(&vs);
                // One optimizer group per head, so each gets its own learning rate.
                let path = vs.root().set_group(heads.len()) / key.as_str();
                let head = CacheHead::new(&path, v, [shape[1], shape[2], shape[3]], classes);
                let params = param_count(&vs) - before;
                heads.push(HeadEntry {
                    layer: info.name.clone(),
                    stage: s,
                    variant: v,
                    key,
                    params,
                    head,
                });
            }
        }
        Ok(Self { vs, heads })
    }

    /// Distinct stages that carry heads, ascending.
    pub fn stages(&self) -> Vec<usize> {
        let mut s: Vec<usize> = self.heads.iter().map(|h| h.stage).collect();
        s.dedup();
        s
    }

    /// Every head's parameters, by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        gati_core::weights::load_into(&mut self.vs, path)
    }

    /// Median batch-1 latency of each head in ms (inference mode, current thread count), as
    /// served: a prepared copy on an activation in the base model's memory layout.
    pub fn measure_costs(&self, model: &BaseModel, runs: usize) -> Result<Vec<f64>> {
        let _g = tch::no_grad_guard();
        let [c, hh, w] = model.spec().input_shape;
        let stages = self.stages();
        let (_, acts) = model.forward_collect(&Tensor::rand([1, c, hh, w], (Kind::Float, model.device())), &stages);
        self.heads
            .iter()
            .map(|h| {
                let x = &acts[stages.iter().position(|&s| s == h.stage).expect("a head's stage")];
                let shape = &model.stages()[h.stage].output_shape;
                let chw = [shape[1], shape[2], shape[3]];
                let head = CacheHead::prepared_copy(&self.vs, &h.key, h.variant, chw, model.spec().num_classes)?;
                for _ in 0..5 {
                    let _ = head.forward_t(x, false).softmax(-1, Kind::Float);
                }
                let mut t: Vec<f64> = (0..runs)
                    .map(|_| {
                        let t0 = Instant::now();
                        let _ = head.forward_t(x, false).softmax(-1, Kind::Float);
                        t0.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                t.sort_by(f64::total_cmp);
                Ok(t[t.len() / 2])
            })
            .collect()
    }
}

/// Trainable parameter count (BatchNorm running statistics excluded).
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On each CIFAR stage's map a branch ends at the last stage's 8x8 resolution (stride 2 while
    /// the map is 16x16 or larger) and gives one row of logits per activation.
    #[test]
    fn a_branch_reads_every_stage_down_to_8x8() {
        for (chw, sides) in [([16, 32, 32], [16, 8]), ([32, 16, 16], [8, 8]), ([64, 8, 8], [8, 8])] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let head = CacheHead::new(&vs.root(), Variant::Branch, chw, 10);
            let x = Tensor::rand([2, chw[0], chw[1], chw[2]], (Kind::Float, tch::Device::Cpu));
            let Layers::Branch { convs, .. } = &head.layers else {
                panic!("a branch head has branch layers")
            };
            let first = x.apply(&convs[0].0);
            let second = first.apply(&convs[1].0);
            assert_eq!(first.size()[2..], [sides[0], sides[0]], "{chw:?}");
            assert_eq!(second.size()[2..], [sides[1], sides[1]], "{chw:?}");
            assert_eq!(head.forward_t(&x, false).size(), [2, 10]);
        }
    }
}
