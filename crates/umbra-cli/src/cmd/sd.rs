//! Stable Diffusion subcommands. (owner: SD pipeline work)

#[derive(clap::Args, Debug)]
pub struct Txt2ImgArgs {}
#[derive(clap::Args, Debug)]
pub struct Img2ImgArgs {}
#[derive(clap::Args, Debug)]
pub struct InpaintArgs {}
#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {}

pub fn txt2img(_a: Txt2ImgArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn img2img(_a: Img2ImgArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn inpaint(_a: InpaintArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn tokenize(_a: TokenizeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
