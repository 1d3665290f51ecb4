//! `umbra bench ...`: throughput benchmarks (never timed tests).
//! Kernel/training benchmarks live in `bench_kernels.rs`, Stable Diffusion ones in `bench_sd.rs`.

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// One training step (forward + backward + AdamW) of the small DDPM U-Net, the same model, batch,
    /// optimizer and thread count as shared/bench/torch_unet_step.py; prints the median step time.
    TrainStep(super::bench_kernels::TrainStepArgs),
    /// Single-op figures: matmul 1024³, conv2d 3×3 64→64 forward and forward+backward.
    Ops(super::bench_kernels::OpsArgs),
    /// Seconds per UNet evaluation and peak memory for an SD architecture with random weights.
    Unet(super::bench_sd::UnetArgs),
    /// Seconds per VAE decode and peak memory for an SD architecture with random weights.
    Vae(super::bench_sd::VaeArgs),
    /// Denoising steps per second of the whole SD text-to-image pipeline with random weights.
    Txt2img(super::bench_sd::Txt2ImgArgs),
    /// Write an SD architecture's random weights as a diffusers pipeline folder, to measure what a real
    /// `umbra txt2img --model DIR` costs in load time and peak memory without downloading a checkpoint.
    WriteRandom(super::bench_sd::WriteRandomArgs),
    /// `umbra serve` in-process: requests/s and p50/p95 latency at 1, 8 and 32 clients, and the server's
    /// overhead against the library's own generation time.
    Serve(super::bench_serve::ServeArgs),
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::TrainStep(a) => super::bench_kernels::train_step(a),
        Command::Ops(a) => super::bench_kernels::ops(a),
        Command::Unet(a) => super::bench_sd::unet(a),
        Command::Vae(a) => super::bench_sd::vae(a),
        Command::Serve(a) => super::bench_serve::serve(a),
        Command::Txt2img(a) => super::bench_sd::txt2img(a),
        Command::WriteRandom(a) => super::bench_sd::write_random(a),
    }
}
