//! Kernel benchmarks. (owner: kernel-layer work)

#[derive(clap::Args, Debug)]
pub struct TrainStepArgs {}
#[derive(clap::Args, Debug)]
pub struct OpsArgs {}

pub fn train_step(_a: TrainStepArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn ops(_a: OpsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
