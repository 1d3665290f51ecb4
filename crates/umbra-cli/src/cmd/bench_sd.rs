//! Stable Diffusion benchmarks. (owner: UNet/VAE work)

#[derive(clap::Args, Debug)]
pub struct UnetArgs {}
#[derive(clap::Args, Debug)]
pub struct VaeArgs {}

pub fn unet(_a: UnetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn vae(_a: VaeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
