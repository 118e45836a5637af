//! CIFAR ResNet-20/32/44/56 (He et al. 2016) with "option A" shortcuts, parameter names as in
//! akamaster/pytorch_resnet_cifar10 (`conv1`, `layer1.0.bn1`, `linear`, ...).

use super::{bn, bn_eval, channels_last, conv, fold_bn, Forward, ModelSpec, Stage, Task, IMAGENET_NORM};
use tch::{nn, Tensor};

/// A 3x3 conv (padding 1) with its BatchNorm folded in (`prepare`): what serving runs. Training
/// (a student's body) runs the separate ops, which is what gradients need.
#[derive(Debug)]
struct Folded {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
}

impl Folded {
    fn new(conv: &nn::Conv2D, bn: &nn::BatchNorm, stride: i64) -> Self {
        let (weight, bias) = fold_bn(conv, bn);
        Self { weight, bias, stride }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [self.stride; 2], [1, 1], [1, 1], 1)
    }
}

#[derive(Debug)]
struct Stem {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    folded: Option<Folded>,
}

impl Forward for Stem {
    fn forward(&self, x: &Tensor) -> Tensor {
        match &self.folded {
            // Channels-last from here on: every later conv then reads its input as oneDNN wants it.
            Some(f) => f.forward(&channels_last(x)).relu(),
            None => bn_eval(&self.bn1, &x.apply(&self.conv1)).relu(),
        }
    }

    fn prepare(&mut self) {
        self.folded = Some(Folded::new(&self.conv1, &self.bn1, 1));
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    stride: i64,
    /// Option A: subsample by 2 and zero-pad this many channels on each side; no weights.
    pad_channels: Option<i64>,
    folded: Option<[Folded; 2]>,
}

impl Forward for BasicBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = match &self.folded {
            Some([f1, f2]) => f2.forward(&f1.forward(x).relu()),
            None => {
                let out = bn_eval(&self.bn1, &x.apply(&self.conv1)).relu();
                bn_eval(&self.bn2, &out.apply(&self.conv2))
            }
        };
        let shortcut = match self.pad_channels {
            Some(p) => x
                .slice(2, 0, None, 2)
                .slice(3, 0, None, 2)
                .constant_pad_nd([0, 0, 0, 0, p, p]),
            None => x.shallow_clone(),
        };
        (out + shortcut).relu()
    }

    fn prepare(&mut self) {
        self.folded = Some([
            Folded::new(&self.conv1, &self.bn1, self.stride),
            Folded::new(&self.conv2, &self.bn2, 1),
        ]);
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
            folded: None,
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
                stride,
                pad_channels: (stride != 1 || in_planes != planes).then_some(planes / 4),
                folded: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Folding every BatchNorm into its conv (and running channels-last) answers as the separate
    /// ops do, on BatchNorms whose statistics and affine parameters are far from the identity.
    #[test]
    fn a_folded_resnet_answers_as_the_unfolded_one() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let (_, mut stages) = build(&vs.root(), "resnet20", 3, 10);
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.contains("bn") {
                    let noise = Tensor::rand_like(&t);
                    let v = match name.rsplit('.').next() {
                        Some("running_var") | Some("weight") => noise * 1.5 + 0.5,
                        _ => noise - 0.5,
                    };
                    t.copy_(&v);
                }
            }
        });
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let run =
            |stages: &[Stage]| tch::no_grad(|| stages.iter().fold(x.shallow_clone(), |h, s| s.module.forward(&h)));
        let plain = run(&stages);
        tch::no_grad(|| stages.iter_mut().for_each(|s| s.module.prepare()));
        let folded = run(&stages);
        let diff = (&plain - &folded).abs().max().double_value(&[]);
        let scale = plain.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "max difference {diff} on logits up to {scale}"
        );
        assert_eq!(plain.argmax(-1, false), folded.argmax(-1, false));
    }
}
