use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model the checkpoint is for (checked key by key and shape by shape)
    #[arg(long)]
    model: String,
    /// PyTorch checkpoint: a state dict, or a dict with 'state_dict'; 'module.' prefixes are stripped
    input: PathBuf,
    /// Output safetensors file
    output: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let n = gati_core::weights::import_pytorch(&a.model, &a.input, &a.output)?;
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
