//! CIFAR ResNet-20/32/44/56 (He et al. 2016) with "option A" shortcuts, parameter names as in
//! akamaster/pytorch_resnet_cifar10 (`conv1`, `layer1.0.bn1`, `linear`, ...).

use super::{bn, bn_eval, conv, Forward, ModelSpec, Stage, Task, IMAGENET_NORM};
use tch::{nn, Tensor};

#[derive(Debug)]
struct Stem {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
}

impl Forward for Stem {
    fn forward(&self, x: &Tensor) -> Tensor {
        bn_eval(&self.bn1, &x.apply(&self.conv1)).relu()
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    /// Option A: subsample by 2 and zero-pad this many channels on each side; no weights.
    pad_channels: Option<i64>,
}

impl Forward for BasicBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = bn_eval(&self.bn1, &x.apply(&self.conv1)).relu();
        let out = bn_eval(&self.bn2, &out.apply(&self.conv2));
        let shortcut = match self.pad_channels {
            Some(p) => x
                .slice(2, 0, None, 2)
                .slice(3, 0, None, 2)
                .constant_pad_nd([0, 0, 0, 0, p, p]),
            None => x.shallow_clone(),
        };
        (out + shortcut).relu()
    }
}

#[derive(Debug)]
struct Head {
    linear: nn::Linear,
}

impl Forward for Head {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.mean_dim([2i64, 3].as_slice(), false, None).apply(&self.linear)
    }
}

/// `blocks` BasicBlocks per stage: 3, 5, 7, 9 for depth 20, 32, 44, 56.
pub(super) fn build(p: &nn::Path, name: &str, blocks: usize, classes: i64) -> (ModelSpec, Vec<Stage>) {
    let mut stages = vec![Stage {
        name: "stem".into(),
        module: Box::new(Stem {
            conv1: conv(p / "conv1", 3, 16, 3, 1, 1),
            bn1: bn(p / "bn1", 16),
        }),
    }];
    stages.extend(residual_stages(p, blocks, classes));
    let spec = ModelSpec {
        name: name.to_string(),
        input_shape: [3, 32, 32],
        num_classes: classes,
        normalization: IMAGENET_NORM,
        task: Task::Classification,
    };
    (spec, stages)
}

/// Everything after the stem: the BasicBlocks of the three stages and the head, reading the
/// stem's 16-channel output.
pub(super) fn residual_stages(p: &nn::Path, blocks: usize, classes: i64) -> Vec<Stage> {
    let mut stages = Vec::new();
    let mut in_planes = 16;
    for (layer, planes) in [(1usize, 16i64), (2, 32), (3, 64)] {
        for i in 0..blocks {
            let stride = if layer > 1 && i == 0 { 2 } else { 1 };
            let bp = p / format!("layer{layer}") / i;
            let block = BasicBlock {
                conv1: conv(&bp / "conv1", in_planes, planes, 3, stride, 1),
                bn1: bn(&bp / "bn1", planes),
                conv2: conv(&bp / "conv2", planes, planes, 3, 1, 1),
                bn2: bn(&bp / "bn2", planes),
                pad_channels: (stride != 1 || in_planes != planes).then_some(planes / 4),
            };
            stages.push(Stage {
                name: format!("layer{layer}.{i}"),
                module: Box::new(block),
            });
            in_planes = planes;
        }
    }
    stages.push(Stage {
        name: "head".into(),
        module: Box::new(Head {
            linear: nn::linear(p / "linear", 64, classes, Default::default()),
        }),
    });
    stages
}
