use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "resnet56")]
    model: String,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model = gati_core::BaseModel::new(&a.model, tch::Device::Cpu)?;
    if a.json {
        return super::print_json(&serde_json::json!({ "model": model.spec(), "stages": model.stages() }));
    }
    for (k, s) in model.stages().iter().enumerate() {
        println!("{k:>3}  {:<10} {:?}", s.name, s.output_shape);
    }
    Ok(())
}
