//! Diffusion subcommands. (owner: diffusion work)

#[derive(clap::Args, Debug)]
pub struct TrainArgs {}
#[derive(clap::Args, Debug)]
pub struct ClassifierArgs {}
#[derive(clap::Args, Debug)]
pub struct EvalArgs {}
#[derive(clap::Args, Debug)]
pub struct SampleArgs {}

pub fn train(_a: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn train_classifier(_a: ClassifierArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn eval(_a: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn sample(_a: SampleArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
