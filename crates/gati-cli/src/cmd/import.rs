use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
enum Format {
    /// A PyTorch checkpoint: a state dict, or a dict with 'state_dict'; 'module.' prefixes stripped
    Pytorch,
    /// A TensorFlow.js weights manifest (`*-weights_manifest.json` beside its .bin shards)
    Tfjs,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model the weights are for (checked key by key and shape by shape)
    #[arg(long)]
    model: String,
    /// Input format (default: tfjs for a .json input, pytorch otherwise)
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// PyTorch checkpoint or TF.js manifest
    input: PathBuf,
    /// Output safetensors file
    output: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let is_json = a.input.extension().and_then(|e| e.to_str()) == Some("json");
    let format = a.format.unwrap_or(if is_json { Format::Tfjs } else { Format::Pytorch });
    let n = match format {
        Format::Tfjs => gati_core::tfjs::import(&a.model, &a.input, &a.output)?,
        Format::Pytorch => gati_core::weights::import_pytorch(&a.model, &a.input, &a.output)?,
    };
    if a.json {
        super::print_json(&serde_json::json!({
            "model": a.model, "input": a.input, "output": a.output, "tensors": n,
            "sha256": gati_core::weights::sha256_file(&a.output)?,
        }))
    } else {
        println!("{}: {n} tensors -> {}", a.model, a.output.display());
        Ok(())
    }
}
