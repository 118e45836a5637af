//! A linear classifier fitted on a frozen model's outputs (softmax regression, full batch, Adam):
//! how `face-lfw62` gets its identification layer from the face ResNet's embeddings.

use tch::{nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};

pub struct LinearFit {
    /// `classifier.weight` `[classes, dim]` and `classifier.bias` `[classes]`.
    pub tensors: Vec<(String, Tensor)>,
    /// Top-1 (%) on the features it was fitted on.
    pub train_top1: f64,
}

/// Fits `classes`-way softmax regression on `features` `[N, D]` (labels in `0..classes`) with
/// weight decay `wd`, for `steps` full-batch Adam steps. Deterministic for a given seed.
pub fn fit_linear(
    features: &Tensor,
    labels: &[i64],
    classes: i64,
    steps: usize,
    lr: f64,
    wd: f64,
    seed: u64,
) -> LinearFit {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let linear = nn::linear(
        vs.root() / "classifier",
        features.size()[1],
        classes,
        Default::default(),
    );
    let mut opt = nn::Adam {
        wd,
        ..Default::default()
    }
    .build(&vs, lr)
    .expect("Adam over a var store");
    let y = Tensor::from_slice(labels);
    let x = features.detach();
    for _ in 0..steps {
        let loss = linear.forward(&x).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let logits = tch::no_grad(|| linear.forward(&x));
    let train_top1 = crate::eval::top1(&logits, labels);
    let tensors = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_kind(Kind::Float)))
        .collect();
    LinearFit { tensors, train_top1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn separable_classes_are_learned() {
        // Three clusters in 4-d, 30 points each.
        let centres = tch::Tensor::from_slice(&[3.0f32, 0., 0., 0., 0., 3., 0., 0., 0., 0., 3., 0.]).view([3, 4]);
        tch::manual_seed(1);
        let labels: Vec<i64> = (0..90).map(|i| i % 3).collect();
        let x = centres.index_select(0, &tch::Tensor::from_slice(&labels))
            + tch::Tensor::randn([90, 4], tch::kind::FLOAT_CPU) * 0.5;
        let fit = super::fit_linear(&x, &labels, 3, 200, 0.05, 0.0, 0);
        assert!(fit.train_top1 > 95.0, "{}", fit.train_top1);
        let names: Vec<&str> = fit.tensors.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"classifier.weight") && names.contains(&"classifier.bias"));
    }
}
