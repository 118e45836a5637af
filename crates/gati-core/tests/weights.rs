//! Checkpoint import: all four shared checkpoints convert; bad checkpoints fail naming the keys.

mod common;

use gati_core::{weights, BaseModel};
use std::path::Path;
use std::process::Command;

#[test]
fn shared_checkpoints_convert_and_load() {
    for name in common::CIFAR_MODELS {
        let w = common::weights(name);
        let m = BaseModel::load(name, &w, tch::Device::Cpu).unwrap();
        let fc = m.var_store().variables()["linear.weight"].shallow_clone();
        assert!(
            fc.abs().sum(tch::Kind::Float).double_value(&[]) > 1.0,
            "{name} weights loaded"
        );
    }
}

/// Writes a checkpoint made from resnet20's by a Python edit of its state dict.
fn edited_checkpoint(dir: &Path, edit: &str) -> std::path::PathBuf {
    let src = gati_core::paths::checkpoint("resnet20").unwrap();
    let dst = dir.join("edited.th");
    let code = format!(
        "import torch,sys\nsd=torch.load(sys.argv[1],map_location='cpu',weights_only=True)['state_dict']\n{edit}\ntorch.save(sd,sys.argv[2])"
    );
    let ok = Command::new(common::python())
        .arg("-c")
        .arg(code)
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(ok.success());
    dst
}

fn import_err(model: &str, ckpt: &Path, out: &Path) -> String {
    format!("{:#}", weights::import_pytorch(model, ckpt, out).unwrap_err())
}

#[test]
fn bad_checkpoints_name_the_offending_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");

    let missing = edited_checkpoint(dir.path(), "del sd['module.layer2.1.bn1.running_mean']");
    let e = import_err("resnet20", &missing, &out);
    assert!(e.contains("missing keys [layer2.1.bn1.running_mean]"), "{e}");

    let extra = edited_checkpoint(dir.path(), "sd['module.extra.weight']=torch.zeros(3)");
    let e = import_err("resnet20", &extra, &out);
    assert!(e.contains("unexpected keys [extra.weight]"), "{e}");

    let shaped = edited_checkpoint(dir.path(), "sd['module.linear.weight']=torch.zeros(10,32)");
    let e = import_err("resnet20", &shaped, &out);
    assert!(
        e.contains("mis-shaped keys [linear.weight (file [10, 32], model [10, 64])]"),
        "{e}"
    );

    // A resnet20 checkpoint is not a resnet32 one: the extra blocks are missing.
    let e = import_err("resnet32", &gati_core::paths::checkpoint("resnet20").unwrap(), &out);
    assert!(e.contains("missing keys [layer1.3.bn1.bias"), "{e}");

    let junk = dir.path().join("junk.th");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let e = import_err("resnet20", &junk, &out);
    assert!(e.contains("cannot read") && e.contains("junk.th"), "{e}");

    let e = import_err("resnet20", &dir.path().join("absent.th"), &out);
    assert!(e.contains("absent.th does not exist"), "{e}");
    assert!(!out.exists(), "no output is left behind by a failed import");
}

#[test]
fn loading_wrong_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        BaseModel::load("resnet56", &common::weights("resnet20"), tch::Device::Cpu).unwrap_err()
    );
    assert!(e.contains("resnet20-") && e.contains("missing keys"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}").unwrap();
    let e = format!(
        "{:#}",
        BaseModel::load("resnet20", &junk, tch::Device::Cpu).unwrap_err()
    );
    assert!(e.contains("junk.safetensors is not a valid safetensors file"), "{e}");
}
