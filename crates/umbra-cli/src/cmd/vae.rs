//! VAE / HVAE subcommands. (owner: VAE work)

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Vae,
    Hvae,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {}
#[derive(clap::Args, Debug)]
pub struct EvalArgs {}
#[derive(clap::Args, Debug)]
pub struct SampleArgs {}
#[derive(clap::Args, Debug)]
pub struct ReconstructArgs {}
#[derive(clap::Args, Debug)]
pub struct InterpolateArgs {}

pub fn train(_a: TrainArgs, _k: Kind) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn eval(_a: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn sample(_a: SampleArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn reconstruct(_a: ReconstructArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn interpolate(_a: InterpolateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
