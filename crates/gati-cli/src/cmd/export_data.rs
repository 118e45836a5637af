//! `gati export-data`: a split's decoded pixels and labels as safetensors, so a training script in
//! another framework (scripts/finetune_base.py) sees exactly the pixels gati serves.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::Tensor;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    md: super::data_args::ModelData,
    /// Split(s) to export, joined with '+' (e.g. train, test)
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long)]
    limit: Option<usize>,
    /// Export one video frame of every image instead (the `frames` stream's camera: shift,
    /// brightness, contrast, noise, JPEG at quality 60-95), drawn from this seed
    #[arg(long, value_name = "SEED")]
    video_frames: Option<u64>,
    /// Output: safetensors with 'pixels' (u8 [N, C, H, W]) and 'labels' (i64 [N])
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model = gati_core::BaseModel::new(&a.md.model, tch::Device::Cpu)?;
    let mut ds = super::data_args::load_split(&model, &a.md.data_dir()?, &a.split, a.limit)?;
    if let Some(seed) = a.video_frames {
        ds = gati_core::workload::video_frames(&ds, seed);
    }
    let tensors: Vec<(String, Tensor)> = vec![
        ("pixels".into(), ds.images.shallow_clone()),
        ("labels".into(), Tensor::from_slice(&ds.labels)),
    ];
    let tmp = gati_core::files::tmp_sibling(&a.out);
    Tensor::write_safetensors(&tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let size = ds.images.size();
    eprintln!("wrote {} images {:?} to {}", ds.len(), size, a.out.display());
    if a.json {
        super::print_json(&serde_json::json!({ "images": ds.len(), "shape": size, "out": a.out }))?;
    }
    Ok(())
}
