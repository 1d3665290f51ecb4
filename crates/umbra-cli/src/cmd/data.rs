//! `umbra data ...`: dataset inspection and download. (owner: datasets work)

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Draw a grid of a dataset's images.
    Show {},
}

pub fn run(_c: Command) -> anyhow::Result<()> {
    anyhow::bail!("`umbra data` is not built yet")
}
