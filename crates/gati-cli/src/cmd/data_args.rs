//! Arguments shared by commands that read a base model and a dataset.

use anyhow::Result;
use gati_core::{data, paths, BaseModel};
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct ModelData {
    #[arg(long, default_value = "resnet56")]
    pub model: String,
    /// Weights: .safetensors, or a PyTorch checkpoint (converted once into ~/.cache/gati).
    /// Default: the model's checkpoint under ../shared/weights
    #[arg(long, env = "GATI_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Dataset folder (image folder, CIFAR binary or LFW). Default: ../shared CIFAR-10 (LFW for
    /// face models), then datasets/
    #[arg(long, env = "GATI_DATA")]
    pub data: Option<PathBuf>,
}

impl ModelData {
    /// (model, safetensors weights path, dataset dir).
    pub fn load(&self) -> Result<(BaseModel, PathBuf, PathBuf)> {
        let weights = paths::resolve_weights(&self.model, self.weights.as_deref())?;
        let model = BaseModel::load(&self.model, &weights, tch::Device::Cpu)?;
        let dir = self.data_dir()?;
        Ok((model, weights, dir))
    }

    pub fn data_dir(&self) -> Result<PathBuf> {
        paths::data_dir_for(&self.model, self.data.as_deref())
    }
}

/// Loads a split sized for `model`'s input.
pub fn load_split(
    model: &BaseModel,
    dir: &std::path::Path,
    split: &str,
    limit: Option<usize>,
) -> Result<data::Dataset> {
    let [_, h, w] = model.spec().input_shape;
    data::load(dir, split, limit, (h, w))
}
