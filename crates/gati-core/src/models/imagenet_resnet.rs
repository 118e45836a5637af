//! ImageNet-layout ResNet-18/34/50 with torchvision's parameter names (`conv1`, `layer1.0.downsample.0`,
//! `fc`, ...), so torchvision checkpoints convert with `gati import-weights`.

use super::{bn, bn_eval, conv, Forward, ModelSpec, Stage, Task, IMAGENET_NORM};
use tch::{nn, Tensor};

#[derive(Debug, Clone, Copy)]
pub(super) enum Depth {
    R18,
    R34,
    R50,
}

#[derive(Debug)]
struct Stem {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
}

impl Forward for Stem {
    fn forward(&self, x: &Tensor) -> Tensor {
        bn_eval(&self.bn1, &x.apply(&self.conv1))
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
    }
}

#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl Downsample {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        Self {
            conv: conv(&p / "0", cin, cout, 1, stride, 0),
            bn: bn(&p / "1", cout),
        }
    }

    fn shortcut(ds: &Option<Self>, x: &Tensor) -> Tensor {
        match ds {
            Some(d) => bn_eval(&d.bn, &x.apply(&d.conv)),
            None => x.shallow_clone(),
        }
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<Downsample>,
}

impl Forward for BasicBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = bn_eval(&self.bn1, &x.apply(&self.conv1)).relu();
        let out = bn_eval(&self.bn2, &out.apply(&self.conv2));
        (out + Downsample::shortcut(&self.downsample, x)).relu()
    }
}

/// torchvision's v1.5 bottleneck: the stride sits on the 3x3 convolution.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<Downsample>,
}

impl Forward for Bottleneck {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = bn_eval(&self.bn1, &x.apply(&self.conv1)).relu();
        let out = bn_eval(&self.bn2, &out.apply(&self.conv2)).relu();
        let out = bn_eval(&self.bn3, &out.apply(&self.conv3));
        (out + Downsample::shortcut(&self.downsample, x)).relu()
    }
}

#[derive(Debug)]
struct Head {
    fc: nn::Linear,
}

impl Forward for Head {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.mean_dim([2i64, 3].as_slice(), false, None).apply(&self.fc)
    }
}

pub(super) fn build(p: &nn::Path, name: &str, depth: Depth, classes: i64) -> (ModelSpec, Vec<Stage>) {
    let (blocks, bottleneck) = match depth {
        Depth::R18 => ([2, 2, 2, 2], false),
        Depth::R34 => ([3, 4, 6, 3], false),
        Depth::R50 => ([3, 4, 6, 3], true),
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let mut stages = vec![Stage {
        name: "stem".into(),
        module: Box::new(Stem {
            conv1: conv(p / "conv1", 3, 64, 7, 2, 3),
            bn1: bn(p / "bn1", 64),
        }),
    }];
    let mut inplanes = 64;
    for (li, (&n, planes)) in blocks.iter().zip([64i64, 128, 256, 512]).enumerate() {
        let layer = li + 1;
        for i in 0..n {
            let stride = if layer > 1 && i == 0 { 2 } else { 1 };
            let bp = p / format!("layer{layer}") / i;
            let out = planes * expansion;
            let downsample =
                (stride != 1 || inplanes != out).then(|| Downsample::new(&bp / "downsample", inplanes, out, stride));
            let module: Box<dyn Forward> = if bottleneck {
                Box::new(Bottleneck {
                    conv1: conv(&bp / "conv1", inplanes, planes, 1, 1, 0),
                    bn1: bn(&bp / "bn1", planes),
                    conv2: conv(&bp / "conv2", planes, planes, 3, stride, 1),
                    bn2: bn(&bp / "bn2", planes),
                    conv3: conv(&bp / "conv3", planes, out, 1, 1, 0),
                    bn3: bn(&bp / "bn3", out),
                    downsample,
                })
            } else {
                Box::new(BasicBlock {
                    conv1: conv(&bp / "conv1", inplanes, planes, 3, stride, 1),
                    bn1: bn(&bp / "bn1", planes),
                    conv2: conv(&bp / "conv2", planes, planes, 3, 1, 1),
                    bn2: bn(&bp / "bn2", planes),
                    downsample,
                })
            };
            stages.push(Stage {
                name: format!("layer{layer}.{i}"),
                module,
            });
            inplanes = out;
        }
    }
    stages.push(Stage {
        name: "head".into(),
        module: Box::new(Head {
            fc: nn::linear(p / "fc", 512 * expansion, classes, Default::default()),
        }),
    });
    let spec = ModelSpec {
        name: name.to_string(),
        input_shape: [3, 224, 224],
        num_classes: classes,
        normalization: IMAGENET_NORM,
        task: Task::Classification,
    };
    (spec, stages)
}
