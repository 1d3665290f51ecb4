//! `umbra quickstart`: the main job on built-in data.

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder.
    #[arg(long, default_value = "runs/quickstart")]
    pub out: std::path::PathBuf,
}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("quickstart is being assembled")
}
