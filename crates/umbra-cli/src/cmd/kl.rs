//! `umbra kl`: the forward- vs reverse-KL lab. (owner: KL-lab work)

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("`umbra kl` is not built yet")
}
