//! Models run stage by stage, and the stages compose to the whole forward pass.

mod common;

use gati_core::BaseModel;
use tch::{Device, Kind, Tensor};

#[test]
fn cifar_resnets_have_stem_blocks_and_head() {
    for (name, blocks) in [("resnet20", 9), ("resnet32", 15), ("resnet44", 21), ("resnet56", 27)] {
        let m = BaseModel::new(name, Device::Cpu).unwrap();
        let st = m.stages();
        assert_eq!(st.len(), blocks + 2, "{name}");
        assert_eq!(st[0].name, "stem");
        assert_eq!(st[0].output_shape, vec![1, 16, 32, 32]);
        assert_eq!(st[1].name, "layer1.0");
        assert_eq!(st[st.len() - 2].output_shape, vec![1, 64, 8, 8]);
        assert_eq!(st.last().unwrap().output_shape, vec![1, 10]);
        // Stage 2's first block halves the resolution and doubles the channels (option A shortcut).
        let k = m.stage_index("layer2.0").unwrap();
        assert_eq!(st[k].output_shape, vec![1, 32, 16, 16]);
    }
}

#[test]
fn imagenet_resnets_have_torchvision_shapes_and_names() {
    for (name, blocks, feat, params) in [
        ("resnet18", 8, 512, 11_689_512i64),
        ("resnet34", 16, 512, 21_797_672),
        ("resnet50", 16, 2048, 25_557_032),
    ] {
        let m = BaseModel::new(name, Device::Cpu).unwrap();
        let st = m.stages();
        assert_eq!(st.len(), blocks + 2, "{name}");
        assert_eq!(st[0].output_shape, vec![1, 64, 56, 56], "{name} stem");
        assert_eq!(st[st.len() - 2].output_shape, vec![1, feat, 7, 7], "{name} last block");
        assert_eq!(st.last().unwrap().output_shape, vec![1, 1000]);
        let vars = m.var_store().variables();
        // Parameter count equals torchvision's (BN running stats excluded).
        let n: i64 = vars
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, v)| v.numel() as i64)
            .sum();
        assert_eq!(n, params, "{name} parameter count");
        assert!(vars.contains_key("layer2.0.downsample.0.weight"));
        assert!(vars.contains_key("fc.weight"));
    }
}

#[test]
fn unknown_model_is_a_clear_error() {
    let err = BaseModel::new("resnet99", Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("unknown model 'resnet99'") && err.contains("resnet56"),
        "{err}"
    );
}

/// An activation shipped between processes as little-endian f32 bytes and rebuilt.
fn via_bytes(t: &Tensor) -> Tensor {
    let shape = t.size();
    let flat: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
    let back: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::from_slice(&back).view(shape.as_slice())
}

#[test]
fn stages_one_by_one_equal_the_whole_pass_on_real_images() {
    let ds = common::test_images(64);
    for name in ["resnet20", "resnet56"] {
        let m = common::pretrained(name);
        let _g = tch::no_grad_guard();
        let x = m.preprocess(&ds.images);
        // Batch 1, as served: each stage's output serialised and rebuilt, as between workers.
        let mut staged = Vec::new();
        let mut whole = Vec::new();
        for i in 0..ds.len() as i64 {
            let mut h = x.narrow(0, i, 1);
            whole.push(m.forward(&h));
            for k in 0..m.num_stages() {
                h = via_bytes(&m.run_stage(k, &h));
            }
            staged.push(h);
        }
        let (staged, whole) = (Tensor::cat(&staged, 0), Tensor::cat(&whole, 0));
        let diff = (&staged - &whole).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{name}: staged vs whole max abs diff {diff}");
        // Resuming mid-network from a stored activation gives the same answer.
        let batched = m.forward(&x);
        let mid = m.forward_range(0, 10, &x);
        let resumed = m.forward_range(10, m.num_stages(), &mid);
        assert!((&resumed - &batched).abs().max().double_value(&[]) <= 1e-5);
        assert_eq!(whole.size(), vec![ds.len() as i64, 10]);
        assert_eq!(whole.kind(), Kind::Float);
    }
}
